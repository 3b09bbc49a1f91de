# syncd: keeps SecureVideo telehealth sessions in step with EHR appointments.
#
#   docker build -t syncd .                       # the image to run (the last stage, = runtime)
#   docker build --target test -t syncd:test .   # the same image plus an in-build smoke test
#   (podman/buildah: add --format docker, or the HEALTHCHECK is dropped from the image)
#
# Runs as an unprivileged user, with a read-only root filesystem if you like: syncd writes only to
# /data (the SQLite ledger and the heartbeat; mount a volume there) and /tmp. Secrets are read from
# /run/secrets, one file per setting named like its variable (e.g. SYNCD_SECUREVIDEO__API_SECRET).
# See docs/container.md for how this file was built and tested, and config/compose.yaml.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheel, install it and its dependencies into a venv ---------------------
FROM ${PYTHON_IMAGE} AS builder

# Only where the package index sits behind a private CA (a build-time proxy): pass
# --build-arg PIP_CERT=/path/to/ca-bundle.crt and mount that bundle into the build.
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/syncd
WORKDIR /src
COPY . .
# Wheels only for the drivers (psycopg's binary wheel, pure-Python PyMySQL): nothing is compiled,
# so the builder needs no compiler either. Bytecode is compiled here, once, because the running
# container may have a read-only root filesystem.
RUN set -eu; \
    if [ -z "${PIP_CERT}" ]; then unset PIP_CERT; fi; \
    /opt/syncd/bin/pip wheel --no-deps --wheel-dir /wheels . ; \
    wheel="$(ls /wheels/syncd-*.whl)"; \
    /opt/syncd/bin/pip install --only-binary=:all: "${wheel}[postgres,mysql]"; \
    /opt/syncd/bin/pip uninstall --yes pip; \
    rm -rf /opt/syncd/share

# --- runtime: the venv on a clean base, nothing else -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric id, so that runAsNonRoot / --user checks and volume ownership are predictable.
RUN set -eu; \
    groupadd --system --gid 10001 syncd; \
    useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin syncd; \
    mkdir -p /data; \
    chown 10001:10001 /data; \
    chmod 0750 /data

COPY --from=builder /opt/syncd /opt/syncd

ENV PATH=/opt/syncd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SYNCD_LEDGER__DATA_DIR=/data \
    SYNCD_LOG__FORMAT=json \
    SYNCD_HEALTH__HOST=0.0.0.0

WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
# /healthz and /metrics, when SYNCD_HEALTH__ENABLED=true (off by default).
EXPOSE 8080

# Reads the heartbeat the daemon keeps in /data: works with the HTTP listener off, costs no query.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["syncd", "healthcheck"]

# syncd is PID 1 and handles SIGTERM itself: the running pass finishes its calls in flight.
STOPSIGNAL SIGTERM
ENTRYPOINT ["syncd"]
CMD ["run"]

# --- test: the runtime image, exercised during the build (`--target test`) ---------------------
FROM runtime AS test

# Everything below runs as the image's user, against the installed wheel, with the migrations it
# ships. At the end, nothing may have been written outside /data and /tmp: the proxy for "works
# with a read-only root filesystem" where containers cannot be run.
RUN set -eu; \
    touch /tmp/.before; \
    for tool in gcc cc c++ make; do \
        if command -v "$tool"; then echo "$tool must not be in the runtime image"; exit 1; fi; \
    done; \
    test ! -e /opt/syncd/bin/pip; \
    test "$(id -u)" = 10001; \
    syncd --help > /dev/null; \
    syncd --version; \
    syncd demo --dir /tmp/demo; \
    SYNCD_LEDGER__DATA_DIR=/tmp/ledger syncd migrate; \
    SYNCD_LEDGER__DATA_DIR=/tmp/ledger syncd migrate; \
    syncd emulator --port 8090 > /tmp/emulator.log 2>&1 & \
    emulator=$!; \
    export SYNCD_OUTBOX__URL=sqlite:////tmp/demo/ehr.sqlite3 \
        SYNCD_OUTBOX__TIMEZONE=America/Chicago \
        SYNCD_SECUREVIDEO__BASE_URL=http://127.0.0.1:8090 \
        SYNCD_SECUREVIDEO__API_KEY=demo \
        SYNCD_SECUREVIDEO__API_SECRET=demo \
        SYNCD_SYNC__POLL_INTERVAL_SECONDS=2 \
        SYNCD_HEALTH__ENABLED=true \
        SYNCD_HEALTH__HOST=127.0.0.1 \
        SYNCD_HEALTH__PORT=8081; \
    python -c 'import socket, time; t = time.time() + 30; exec("while True:\n try:\n  socket.create_connection((\"127.0.0.1\", 8090), 1).close(); break\n except OSError:\n  assert time.time() < t, \"emulator did not start\"; time.sleep(0.2)")'; \
    if syncd healthcheck; then echo "healthcheck passed before the daemon ran"; exit 1; fi; \
    syncd check; \
    syncd run > /tmp/run.log 2>&1 & \
    daemon=$!; \
    tries=0; \
    until syncd healthcheck; do \
        tries=$((tries + 1)); \
        if [ "$tries" -gt 60 ]; then cat /tmp/run.log; exit 1; fi; \
        sleep 1; \
    done; \
    python -c 'import json, urllib.request as u; h = json.load(u.urlopen("http://127.0.0.1:8081/healthz")); print(h); assert h["status"] == "ok"; m = u.urlopen("http://127.0.0.1:8081/metrics").read().decode(); assert "syncd_operations_total{kind=\"create\",outcome=\"applied\"}" in m, m; assert "Patient" not in m'; \
    syncd status --json; \
    kill -TERM "$daemon"; \
    wait "$daemon"; \
    grep -q '"event": "daemon_stopped"' /tmp/run.log; \
    if grep -q 'Sample Patient' /tmp/run.log; then echo "a patient's name in the log"; exit 1; fi; \
    test ! -e /data/heartbeat.json; \
    kill "$emulator"; \
    written="$(find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /data \) -prune -o -newer /tmp/.before -print 2>/dev/null || true)"; \
    if [ -n "$written" ]; then echo "written outside /data and /tmp:"; echo "$written"; exit 1; fi; \
    echo "syncd image smoke test: OK"

# --- the default target: the runtime image, without the test's layer ----------------------------
FROM runtime
