-- More client APIs (issue 21): a rerank call's search units, as the
-- provider reported them (Cohere), or estimated by Cohere's rule (a query
-- with up to 100 documents, each 500 tokens of document and query one
-- more) where the target is priced per search unit and the provider says
-- nothing. 0 for every other call. Tokens stay in the token columns.
ALTER TABLE switchyard.requests
    ADD COLUMN search_units UInt64 DEFAULT 0
