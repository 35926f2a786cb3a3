"""Where the managed configuration lives: ``base`` (the contract), ``memory`` (tests,
development), ``sqlite`` (one file, ``--data-dir``) and ``redis`` (shared by
replicas), each with change notification for live reload."""
