"""The TaskVine engine (docs/distributed.md): engine.py is the manager's loop, manager.py the
TaskVine manager it runs, worker.py what the workers run, command.py `flowdc worker --engine
taskvine`. Nothing here imports TaskVine until a run uses it: the workers' library imports
worker.py only."""
