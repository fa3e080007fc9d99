"""The job service behind the HTTP API: job control (manager, scheduler), queries, locations.

See docs/architecture.md for a job's data flow from POST /jobs to its sinks.
"""
