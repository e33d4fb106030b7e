"""The Kafka worker: `vmstream worker --config FILE`.

Workers in one consumer group (`kafka.group_id`) share the jobs topic
(`kafka.jobs_topic`). A job is a JSON message naming a stream and where to read it:

    {"stream_id": "cam-7", "uri": "rtsp://10.0.0.7/stream", "options": {...}, "live": true}
    {"uri": "/data/videos/match.mp4"}                    # stream id = the absolute path

(`vmstream.stages.sources.source_from_job` validates it). Key job messages by stream
id: a stream's jobs then share a partition, so two workers never run one stream at
once (a worker runs two jobs of one stream one after the other). A worker runs its jobs
through the pipeline runner, at most `runner.max_streams` at a time, and publishes
results, events and summaries to Kafka (plus the local Parquet / FAISS outputs its
config asks for). Every `runner.snapshot_every` segments the runner flushes the sinks
and saves each stream's state to the compacted state topic
(`vmstream.kafka.state.KafkaStateStore`), so a stream resumes on another worker after
a crash or a rebalance: no segment lost, duplicates only since the last snapshot (same
uids: readers and the FAISS / Parquet sinks de-duplicate).

Offsets: auto-commit is off. A partition's offset is committed only past jobs that
are done (their results acknowledged by the broker: the runner flushes the sinks
before it reports a stream done), i.e. up to the first job not yet done. A crash
therefore re-delivers every unfinished job, and also finished jobs that sat behind an
unfinished one in the same partition (these run again from the start: at-least-once).

Rebalances use the cooperative-sticky assignor (KIP-429), so a worker joining or
leaving moves only the partitions it must, and running jobs on other partitions go
on. When a partition is revoked, the worker cancels the jobs taken from it (the
runner saves their snapshots), waits for that (bounded by `revoke_timeout_s`, while
the consumer keeps heartbeating), commits what is done, and gives the partition up;
the next owner gets the unfinished jobs again and resumes them from the snapshots.
A job whose cancellation outlasts the wait is fenced: its later snapshot writes are
dropped, so they cannot overwrite the new owner's. Partitions *lost* (the group
evicted this worker) are fenced at once and nothing is committed.

What a job may read is the worker config's job policy (`kafka.jobs`, job_policy.py):
URI schemes, local roots, hosts, and the options a job may set; a job outside it is
dead-lettered (reason "refused") with a message that tells nothing about the machine.
A job may not reuse a stream id run from another uri unless `kafka.jobs.allow_replace`
(dead-lettered "failed").

Failures: a message that is not a valid job (not UTF-8 JSON, missing or bad fields)
and a job whose input fails (status "failed": missing / not a video; "error": decode
error) go to `kafka.dead_letter_topic` with the error, the original message and where
it came from; once that is acknowledged the job's offset counts as done and the
worker goes on. A job whose snapshot cannot be loaded (state topic unreachable) is an
infrastructure failure, not the job's: it is retried after a backoff.

Threads: kafka-python's consumer is not thread-safe, so only the worker's main thread
touches it (and the rebalance listener, which kafka-python runs while the main
thread is inside `poll`). The runner reports finished streams from its sink thread;
those reports reach the main thread through a queue.

SIGINT / SIGTERM: stop taking jobs, stop the runner (snapshots saved, sinks flushed),
commit what is done, leave the group (the others take the partitions over at once).
A second signal exits immediately.

The modules:

    jobs.py          a job (Job, parse_job: bounded in size and depth before parsing),
                     offsets committable past done jobs
                     (OffsetLedger), the table of jobs a worker holds (JobTable) and
                     what the worker counts of them (WorkerStats)
    options.py       the consumer's options and the topics, from the pipeline config
    job_policy.py    what a job may make the worker read (JobPolicy, JobRefused)
    loop.py          the worker (Worker): take, run, finish, commit, stop; it makes the
                     parts below and owns the job table they share
    consumer.py      the jobs topic's consumer riding out the broker's trouble:
                     poll, heartbeat while full, commit (JobConsumer)
    handover.py      rebalances: revoke, fence, hand over (Handover, GuardedStore); the
                     Handover is given the job table, the runner (to cancel), the
                     consumer (to commit) and the dead letters (to forget)
    dead_letters.py  the dead-letter topic (DeadLetters, dead_letter_payload)
    log_filter.py    the log filters `vmstream worker` installs: kafka-python's repeats
                     (RepeatFilter), URL passwords (RedactFilter)

The Kafka transport itself (producer, state store, topics) is `vmstream.kafka`.
"""

from vmstream.pipeline.worker.log_filter import RedactFilter, RepeatFilter
from vmstream.pipeline.worker.loop import Worker

__all__ = ["Worker", "RepeatFilter", "RedactFilter"]
