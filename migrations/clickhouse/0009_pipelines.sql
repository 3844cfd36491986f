-- Pipelines (issue 20, docs/pipelines.md): each step of a `pipeline:<name>`
-- run is a request of its own; its rows name the run (a UUID as text) and
-- the step. Empty for calls that are no pipeline's step.
ALTER TABLE switchyard.requests
    ADD COLUMN pipeline_run String DEFAULT '',
    ADD COLUMN pipeline_step String DEFAULT ''
