"""One router per resource: health, models, simulators, jobs."""
