"""Services: what the signal handlers, tasks and commands do, one module per job."""
