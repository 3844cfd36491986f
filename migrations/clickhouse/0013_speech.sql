-- Text to speech (issue 21): the characters of text an attempt was asked
-- to speak (billed at per_character). 0 for every other call.
ALTER TABLE switchyard.requests
    ADD COLUMN input_characters UInt32 DEFAULT 0
