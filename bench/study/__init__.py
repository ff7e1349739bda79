"""The study band: study files, their plan, the runner and its executors, reports."""
