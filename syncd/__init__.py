"""syncd keeps SecureVideo telehealth sessions in step with EHR appointments."""

__version__ = "0.1.0"
