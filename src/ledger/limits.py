"""Every bound the ledger enforces, in one place (TigerStyle: put a limit on everything)."""

# Inbound and command messages.
message_bytes_max = 64 * 1024
"""A Kafka message value larger than this is dead-lettered as `too_large` before parsing."""
json_depth_max = 32
"""JSON nested deeper than this is refused as a contract error."""
identifier_chars_max = 128
"""Longest id accepted for account, event, invoice, payment, refund, dispute and customer ids."""
text_chars_max = 1000
"""Longest free text accepted (reasons, summaries)."""
amount_minor_max = 10**15
"""Largest single amount in minor units (10 trillion in a two-decimal currency)."""
balance_minor_max = 2**62
"""No ledger balance may grow beyond this: keeps every sum inside a signed 64-bit column."""

# Kafka consumption and production.
poll_records_max = 2000
"""Records one poll may return (one database transaction per partition per poll)."""
poll_timeout_ms = 100
fetch_max_wait_ms = 20
"""How long the broker may hold a fetch for more data: short, for latency."""
consumer_session_timeout_ms = 6000
topic_check_interval_s = 5.0
"""How often a consumer re-checks topic ids and high watermarks for recreated topics."""
consumer_stall_timeout_s = 20.0
"""A group consumer whose owned partitions lag their log ends while it delivers nothing for this
long, or whose rebalance started and has not finished after this long, is closed and rebuilt
(the watchdog in `ledger.kafka.recovery`). Several group joins (3 s each on Tansu) fit in it."""
consumer_close_timeout_ms = 2000
"""How long closing a (possibly wedged) consumer may wait for its LeaveGroup."""
batch_retry_max = 8
"""Attempts for one partition batch after version conflicts before the consumer gives up."""
conflict_backoff_s = 0.01
"""First jittered wait after a version conflict; doubles per conflict of the same batch."""
producer_retry_max = 8
"""Attempts to send a batch through a rebuilt producer before the worker fails."""
backoff_initial_s = 0.2
backoff_max_s = 5.0

# Event store and read models.
snapshot_interval_events = 100
"""The ingest snapshots an account each time its version passes a multiple of this."""
aggregate_cache_max = 10_000
"""Account aggregates kept in memory by one ingest worker (least recently used are dropped)."""
notification_batch_max = 2000
"""Notifications read from the event store per relay or projection batch."""
projection_idle_poll_s = 0.02
"""How long a relay or projection sleeps when the event store has nothing new."""
query_wait_timeout_s = 30.0
"""Default bound on `--wait` for a query to see the latest position."""
history_page_max = 100_000
"""Most events one `ledger history` call returns."""
sqlite_busy_timeout_s = 5.0
"""Longest one SQLite statement waits for another process's write lock. A longer wait fails the
batch, which the worker's back-off loop retries (and which checks for a stop request between
tries), so a worker never sits in a lock wait that outlasts its shutdown grace."""

# Processes.
shutdown_grace_s = 8.0
"""How long `ledger run` waits for a worker to stop after SIGTERM before killing it."""
worker_restart_max = 20
"""Restarts of a crashed worker before `ledger run` gives up and exits."""
broker_start_timeout_s = 30.0

# Kafka clients and the embedded broker (added with the Kafka plumbing).
broker_stop_timeout_s = 6.0
"""How long `EmbeddedBroker.stop()` waits after SIGTERM before SIGKILL (Tansu drains for 5 s)."""
client_bootstrap_timeout_ms = 10_000
"""How long a new Kafka client waits for its first answer from the cluster before failing."""
client_request_timeout_ms = 10_000
"""How long a producer or admin client waits for the answer to one request."""
producer_send_block_timeout_ms = 10_000
"""How long `KafkaProducer.send` may block for metadata or buffer space (kafka `max_block_ms`)."""
producer_delivery_timeout_ms = 30_000
"""How long a queued record may wait for its acknowledgement before it fails."""
producer_flush_timeout_s = 40.0
"""Longest one flush waits for a batch's acknowledgements before the producer is rebuilt."""
producer_flush_slice_s = 0.25
"""A flush waits in slices of this length, checking for a stop request between them."""
producer_close_timeout_s = 1.0
"""How long closing a broken producer may wait for its in-flight requests."""
producer_request_bytes_max = 1024 * 1024
"""Largest produce request and record: above any message we consume, so any can be dead-lettered."""
producer_batch_bytes_max = 256 * 1024
"""Bytes a producer gathers per partition batch before sending it."""
producer_pending_max = 100_000
"""Unacknowledged messages one ResilientProducer keeps for re-sending; a full buffer flushes."""

# Dead letters.
reason_chars_max = 300
"""Longest one-line `error_reason` of a refused message (longer reasons are cut with "...")."""

# Runtime.
gc_gen0_threshold = 50_000
"""Allocations between collections of the youngest generation in a worker (Python's is 700)."""
