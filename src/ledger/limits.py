"""Every bound the ledger enforces, in one place (TigerStyle: put a limit on everything)."""

# Inbound and command messages.
message_bytes_max = 64 * 1024
"""A Kafka message value larger than this is dead-lettered as `too_large` before parsing."""
broker_message_bytes_max = 1024 * 1024
"""The largest record the ledger assumes a broker accepts: Apache Kafka's default
`message.max.bytes` (1,048,588 bytes) rounded down. Tansu 0.6.0 has no such limit (it took and
served a 30 MB record), so a processor can hand us more than we can pass on unchanged."""
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
read_topic_idle_ms = 1500
"""`read_topic` (the demo's and the tests' reader) stops after this long with nothing new."""
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
logged_ids_max = 20
"""How many ids (accounts, events) one log line lists at most; it gives the total too."""
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
notification_uuid_cache_max = 100_000
"""Originator ids a reader of the log keeps parsed (cleared when full: about 10 MB at most)."""
projection_idle_poll_s = 0.02
"""How long a relay or projection sleeps when the event store has nothing new."""
live_read_attempts_max = 3
"""Tries of one query whose read model was swapped by a rebuild while it read."""
query_wait_timeout_s = 30.0
"""Default bound on `--wait` for a query to see the latest position."""
query_wait_poll_initial_s = 0.01
"""First pause of `--wait` between two looks at the read models' positions (then doubling)."""
query_wait_poll_max_s = 0.2
"""Longest pause of `--wait` between two looks."""
demo_poll_s = 0.3
"""How often `ledger demo` looks whether its scenario has gone through."""
history_page_max = 100_000
"""Most events one `ledger history` call returns."""
projection_lookup_ids_max = 500
"""Ids per `IN (...)` lookup a projection makes for the rows a batch changes."""
query_rows_max = 10_000
"""Most rows one list query (`ledger overpayments`, `ledger follow-ups`) returns."""
feedback_report_rows_max = 100_000
"""Most resolved disputes one `ledger disputes feedback-report` summarises (newest first; the
report says when it left older ones out)."""
sqlite_in_chunk_max = 500
"""Values per `IN (...)` query on SQLite (its own limit is far above; keeps plans small)."""
postgres_lock_timeout_s = 10
"""Longest wait of an event-store write for the events table's lock (eventsourcing's
`POSTGRES_LOCK_TIMEOUT`): one writer per account makes long waits a sign of a second writer."""
postgres_idle_in_transaction_timeout_s = 30
"""A session idle inside a transaction this long is ended by the server (the library's default
of 5 s is too short for a batch prepared while its commit is in flight)."""
postgres_pool_size = 2
"""Event-store connections one process keeps open (a worker writes from one thread and reads
from one other at most)."""
postgres_pool_overflow_max = 2
"""Connections opened beyond the pool under a burst, closed again after."""
sqlite_busy_timeout_s = 5.0
"""Longest one SQLite statement waits for another process's write lock. A longer wait fails the
batch, which the worker's back-off loop retries (and which checks for a stop request between
tries), so a worker never sits in a lock wait that outlasts its shutdown grace."""
sqlite_checkpoint_interval_s = 1.0
"""Longest time between two checkpoints of the event store's log by the process that writes
events (`persistence.wal_checkpoints`); each commit asks for one at once."""
database_connect_timeout_s = 5
"""Longest wait for a new PostgreSQL connection (libpq takes whole seconds)."""
schema_lock_wait_max_s = 60.0
"""Longest one schema preparation waits for another process's to finish (advisory lock)."""
sqlite_quiescent_read_attempts_max = 5
"""Tries of a query on a SQLite file that nobody had open, read as immutable, when a writer
changed the file during the read (the next try reads through the writer's WAL)."""

# The policy file (bounds on what a policy may set).
policy_refund_retry_max = 20
"""The most retries of a failed refund a policy may allow (`refunds.retry_max`), and the most
entries of `refunds.retry_backoff`."""
policy_thresholds_max = 100
"""Most verification thresholds one policy may list (over all currencies)."""
policy_follow_up_contacts_max = 100
"""Most contacts a policy may let a follow-up make before it escalates."""
policy_errors_shown_max = 10
"""Most problems one refused policy file's one-line reason names (then "and N more")."""
policy_duration_max_days = 36_500
"""Longest duration a policy may set (escrow period, dormancy, back-off ...): a century."""

# Relays (shares of ledger.events, leases, standbys).
relay_workers_max = 64
"""Most relay shares (`LEDGER_RELAY_WORKERS`); more than the partitions leaves shares idle."""
relay_partition_cache_max = 100_000
"""Keys whose partition a relay remembers (murmur2 in pure Python costs about 10 µs a key)."""
relay_standby_retry_s = 1.0
"""How often a standby relay tries again to take a share that another relay holds."""
relay_lease_ttl_s = 6.0
"""How long a SQLite lease row stays valid without renewal: a relay killed with its lease held
is replaced within about this long. (PostgreSQL leases are advisory locks, gone with the
holder's connection.)"""
relay_lease_renew_interval_s = 1.0
"""How often a relay on SQLite renews its lease; it stops publishing once a lease has gone
`relay_lease_ttl_s - relay_lease_renew_interval_s` without renewal, before anyone may take it."""

# The scheduler.
scheduler_tick_s = 1.0
"""How often the scheduler looks for due items (a pass that met its rate limit goes again
after one tick too)."""
scheduler_fires_per_s_max = 100
"""Most firings the scheduler publishes per second (a pass publishes at most this many times
`scheduler_tick_s`); the rest wait for the next pass, oldest due first."""
scheduler_refire_interval_s = 30.0
"""A firing whose item is still not done this long after it was published is published again
(same command id, so the account applies it once): a firing lost with a broker, or one the
read model has not caught up with yet."""
scheduler_fired_remembered_max = 100_000
"""Firings the scheduler remembers as recently published (oldest forgotten first): a forgotten
one may be published again early, which its command id makes harmless."""

# Processes.
supervisor_check_interval_s = 0.5
"""How often `ledger run` (and `ledger broker`) checks its children while waiting for a stop."""
shutdown_grace_s = 8.0
"""How long `ledger run` waits for a worker to stop after SIGTERM before killing it."""
worker_restart_max = 20
"""Restarts of a crashed worker before `ledger run` gives up and exits."""
broker_start_timeout_s = 30.0
start_attempts_max = 8
"""Tries of `ledger run`'s start (topics and schema) through an outage or a race, with back-off
from `backoff_initial_s` doubling up to `backoff_max_s` (about 16 s of waiting) before it exits."""

# Kafka clients and the embedded broker (added with the Kafka plumbing).
broker_stop_timeout_s = 6.0
"""How long `EmbeddedBroker.stop()` waits after SIGTERM before SIGKILL (Tansu drains for 5 s)."""
broker_probe_timeout_s = 2.0
"""Longest wait of a command a person runs for a TCP connection to a configured broker, before
it says that none listens there (rather than wait for a Kafka client's bootstrap timeout)."""
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
producer_request_bytes_max = broker_message_bytes_max
"""Largest produce request and record (kafka `max_request_size`): what the broker accepts."""
consumer_partition_fetch_bytes_max = broker_message_bytes_max
"""Bytes one fetch returns per partition (kafka `max_partition_fetch_bytes`). A larger record
still arrives, alone in its fetch, so an oversized message is dead-lettered, never stuck."""
consumer_fetch_bytes_max = 16 * broker_message_bytes_max
"""Bytes one fetch returns over all partitions (kafka `fetch_max_bytes`)."""
producer_metadata_max_age_ms = 300_000
"""How old a producer's cluster metadata may grow before it is fetched again (kafka-python's
default). The relay's producer refreshes every `topic_check_interval_s` instead: a relay computes
its shares from that metadata's partition count."""
producer_linger_ms = 5
"""How long a producer waits to fill a batch before sending it (kafka `linger_ms`)."""
producer_batch_bytes_max = 256 * 1024
"""Bytes a producer gathers per partition batch before sending it."""
producer_pending_max = 100_000
"""Unacknowledged messages one ResilientProducer keeps for re-sending; a full buffer flushes."""

# Dead letters.
reason_chars_max = 300
"""Longest one-line `error_reason` of a refused message (longer reasons are cut with "...")."""
dead_letter_headers_bytes_max = 16 * 1024
"""Room kept for a dead letter's headers: the reasons we add plus the message's own headers.
Original headers larger than this are left off a dead letter (a header says so)."""
dead_letter_excerpt_bytes_max = 64 * 1024
"""A message too large to dead-letter unchanged is sent as its first this many bytes (and the
first this many of its key), with headers giving its full size and SHA-256."""
message_attempts_max = 2
"""Tries of one message alone, after its batch failed for a reason that is not an outage,
before it is dead-lettered as `unprocessable` (a second try rules out a passing fault)."""

# Runtime.
gc_gen0_threshold = 50_000
"""Allocations between collections of the youngest generation in a worker (Python's is 700)."""

# Logs.
kafka_outage_quiet_s = 60.0
"""A broker outage's log lines end with a summary once the Kafka clients have logged no error
for this long (if no successful connection ended it first). Longer than kafka-python's largest
reconnect back-off (30 s), so one outage is reported once."""

staff_command_timeout_s = 10.0
"""How long a CLI staff command waits for its outcome by default (`--timeout`); then exit 3."""

outcome_poll_initial_s = 0.02
outcome_poll_max_s = 0.25
"""How often a waiting staff command reads its outcome (doubling from the first to the last)."""
