-- Image generation (issue 21): the images an attempt generated (billed at
-- the target's per_output_image price, besides any tokens the provider
-- reports). 0 for every other call.
ALTER TABLE switchyard.requests
    ADD COLUMN output_images UInt32 DEFAULT 0
