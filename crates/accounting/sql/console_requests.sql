-- The newest attempts a filter matches (sy_accounting::recent_requests,
-- GET /admin/v1/requests). Parameters: since (Unix seconds); then each
-- filter as on (0/1) and value: org_id, request id (a UUID's text), key_id,
-- model, status, tag (on, key, key again, value); then the limit.
SELECT toUInt32(ts), request_id, attempt, key_id, org_id, project_id, api, model, class,
       route, strategy, provider, upstream_model, stream, status, error_code, fallback_reason,
       input_tokens, output_tokens, ifNull(toString(cost), ''), ifNull(toString(billed), ''),
       queue_wait_ms, ttft_ms, latency_ms, trace_id, tag_keys, tag_values
FROM switchyard.requests FINAL
WHERE ts >= toDateTime(?) AND (? = 0 OR org_id = ?) AND (? = 0 OR request_id = toUUID(?))
  AND (? = 0 OR key_id = ?) AND (? = 0 OR model = ?) AND (? = 0 OR status = ?)
  AND (? = 0 OR (has(tag_keys, ?) AND tag_values[indexOf(tag_keys, ?)] = ?))
ORDER BY received_ms DESC, attempt DESC LIMIT ?
