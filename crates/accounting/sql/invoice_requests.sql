-- The distinct requests of an org's period (sy_accounting::invoice_rows).
-- Parameters: org_id, start, end (Unix seconds).
SELECT uniqExact(request_id) AS n FROM switchyard.requests FINAL
WHERE org_id = ? AND ts >= toDateTime(?) AND ts < toDateTime(?)
