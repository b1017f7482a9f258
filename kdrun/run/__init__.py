"""One run of a command: its config schema and checks, its run directory, how it starts, stops, fails and resumes."""
