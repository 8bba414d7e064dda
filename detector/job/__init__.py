"""The experiment job: its config, run folder, stages, the whole pipeline, and the one module that talks to Ray."""
