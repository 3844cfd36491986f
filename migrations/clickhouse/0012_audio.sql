-- Audio transcriptions and translations (issue 21): the seconds of audio
-- an attempt was billed (rounded up, as the provider's answer gave them:
-- its usage, verbose_json's duration, or the last subtitle cue's end).
-- 0 for every other call.
ALTER TABLE switchyard.requests
    ADD COLUMN audio_seconds UInt32 DEFAULT 0
