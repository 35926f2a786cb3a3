"""Where the managed configuration lives: ``base`` (the contract and the in-memory
store), ``sqlite`` (one file, ``--data-dir``) and ``redis`` (shared by replicas),
each with change notification for live reload."""
