"""The functional core: the domain, the planner, the row parser, the retry policy and the view
after an answer.  Pure, standard library only: tested as tables, with no I/O."""
