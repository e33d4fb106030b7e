"""The worker's consumer loop: take jobs from the jobs topic, run them in the pipeline
runner, commit offsets past finished jobs, stop cleanly (see the package doc)."""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
from typing import Optional

from vmstream.errors import UserError
from vmstream.kafka.topics import TopicNames
from vmstream.pipeline.signals import StopSignals
from vmstream.pipeline.worker.consumer import JobConsumer, fmt_offsets
from vmstream.pipeline.worker.dead_letters import DeadLetters
from vmstream.pipeline.worker.handover import GuardedStore, Handover, make_listener
from vmstream.pipeline.worker.job_policy import JobPolicy, JobRefused
from vmstream.pipeline.worker.jobs import Job, JobTable, WorkerStats, parse_job
from vmstream.pipeline.worker.options import consumer_options, ensure_worker_topics, sync_wait_s

log = logging.getLogger(__name__)


def take_error(e: Exception) -> tuple[str, str]:
    """The dead-letter reason and error of a job record that could not be taken. Any
    exception counts: whatever a record holds, it is that job's fault, never the
    worker's end (a restarted worker would read the same record and stop again)."""
    if isinstance(e, JobRefused):
        return "refused", str(e)
    if isinstance(e, ValueError):  # SourceSpecError, parse_job's errors
        return "bad_message", str(e)
    return "bad_message", f"{type(e).__name__}: {e}"


def failure_reason(status: str, error: Optional[str]) -> str:
    """The dead-letter reason of a job the runner failed. A format the job policy does
    not allow is found only when FFmpeg probes the data, in the runner: the policy's
    refusal all the same."""
    return "refused" if "(kafka.jobs.formats" in (error or "") else status


def _cut(text: str, limit: int = 300) -> str:
    """A job's words in the log: a hostile job may be 64 KiB of them."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class Worker:
    """One member of the worker group (see the package doc).

        worker = Worker(cfg)          # cfg: PipelineConfig with a kafka section
        rc = worker.run()             # until stop() / SIGINT / SIGTERM

    `model`, `sinks`, `state_store` replace the configured ones (tests, embedding).
    """

    def __init__(
        self,
        cfg,
        *,
        model=None,
        sinks=None,
        state_store=None,
        poll_timeout_s: float = 0.2,
        revoke_timeout_s: float = 30.0,
        retry_backoff_s: float = 5.0,
        shutdown_timeout_s: float = 120.0,
        commit_timeout_s: float = 10.0,
        install_signals: bool = True,
    ):
        if not cfg.kafka.bootstrap:
            raise UserError("the worker needs Kafka: set kafka.bootstrap in the config or pass --kafka HOST:PORT")
        self.cfg = cfg
        self.poll_timeout_s = poll_timeout_s
        self.revoke_timeout_s = revoke_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.install_signals = install_signals
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.topics = TopicNames.from_config(cfg.kafka)
        self.job_policy = JobPolicy(cfg.kafka.jobs)
        self._model = model
        self._sinks = sinks
        self._store = state_store
        self.table = JobTable()
        self.stats = WorkerStats()
        self._completed: "queue.Queue[Job]" = queue.Queue()
        self._stop_requested = threading.Event()
        # Made by _start, as they reach the broker; the hand-over is given the first three.
        self.runner = None  # vmstream.pipeline.runner.Runner
        self.consumer: Optional[JobConsumer] = None
        self.dead_letters: Optional[DeadLetters] = None
        self.handover: Optional[Handover] = None

    # ----------------------------------------------------------------- public

    def stop(self) -> None:
        """Ask the worker to stop cleanly (thread- and signal-safe)."""
        self._stop_requested.set()

    def run(self) -> int:
        """Serve jobs until stopped. Returns the process exit code (0 on a clean stop,
        1 when the pipeline failed)."""
        from kafka import errors as E

        signals = StopSignals(self.stop, what="snapshots, flush, commit") if self.install_signals else None
        if signals is not None:
            signals.__enter__()
        try:
            try:
                self._start()
            except (E.KafkaError, ConnectionError, ValueError) as e:  # ValueError: a bad client setting
                self._abort_start()
                raise UserError(f"Kafka at {self.cfg.kafka.bootstrap}: {e}") from None
            except BaseException:
                self._abort_start()
                raise
            rc = 0
            try:
                self._serve()
            except Exception as e:  # the pipeline failed (e.g. a sink gave up on the broker)
                log.error(
                    "worker %s: %s: %s; stopping without committing unfinished jobs",
                    self.worker_id,
                    type(e).__name__,
                    e,
                    exc_info=not isinstance(e, RuntimeError),
                )
                rc = 1
            return max(rc, self._shutdown(failed=rc != 0))
        finally:
            self._close_clients()
            if signals is not None:
                signals.__exit__(None, None, None)

    # ----------------------------------------------------------------- start / stop

    def _start(self) -> None:
        from kafka import KafkaConsumer

        from vmstream.kafka.producer import ReliableProducer
        from vmstream.kafka.state import KafkaStateStore
        from vmstream.pipeline.assembly import build_runner, build_sinks, load_pipeline_model

        cfg = self.cfg
        k = cfg.kafka
        ensure_worker_topics(k, self.topics)
        consumer_opts = consumer_options(cfg, self.worker_id)
        model = self._model if self._model is not None else load_pipeline_model(cfg)
        if self._store is None:
            self._store = KafkaStateStore(k.bootstrap, self.topics.state, client_config=k.client)
        sinks = self._sinks if self._sinks is not None else build_sinks(cfg, model)
        self.dead_letters = DeadLetters(
            ReliableProducer(k.bootstrap, client_config=k.client),
            self.topics.dead_letter,
            worker_id=self.worker_id,
            group_id=k.group_id,
            lock=self.table.lock,
        )
        self.runner = build_runner(
            cfg,
            model=model,
            sinks=sinks,
            state_store=GuardedStore(self._store, self.table),
            flush_on_stream_end=True,
            allow_replace=cfg.kafka.jobs.allow_replace,
        )
        self.runner.start()
        self.consumer = JobConsumer(
            KafkaConsumer(**consumer_opts),
            worker_id=self.worker_id,
            stopping=self._stop_requested,
            retry_wait_s=min(self.poll_timeout_s, 1.0),
            commit_timeout_s=self.commit_timeout_s,
        )
        self.handover = Handover(
            self.table,
            runner=self.runner,
            consumer=self.consumer,
            dead_letters=self.dead_letters,
            stats=self.stats,
            worker_id=self.worker_id,
            revoke_timeout_s=self.revoke_timeout_s,
            sleep=self.consumer.loop_sleep(),
            sync_wait_s=sync_wait_s(consumer_opts),
        )
        self.consumer.subscribe(self.topics.jobs, make_listener(self.handover))
        log.info(
            "worker %s: in group %s on %s, up to %d jobs at a time",
            self.worker_id,
            k.group_id,
            self.topics.jobs,
            self.runner.max_streams,
        )

    def _shutdown(self, failed: bool) -> int:
        """Stop the runner (snapshots), keep the group alive while it drains, commit
        what is done, leave the group."""
        if self.consumer is None:
            return 1 if failed else 0
        log.info("worker %s: stopping: %d job(s) running", self.worker_id, len(self.runner.running()))
        self.runner.stop()
        failed = self._drain(failed)
        self._process_completions(stopping=True)
        if not failed:
            try:
                self.dead_letters.flush(timeout_s=30.0)
            except Exception as e:
                log.error("dead-letter topic: %s", e)
            self._check_dead_letters()
            self._commit(final=True)
        try:
            report = self.runner.close()
            log.info("worker %s: %s", self.worker_id, report.format().replace("\n", "; "))
        except RuntimeError as e:
            log.error("worker %s: %s", self.worker_id, e)
            failed = True
        try:
            # Leaving the group hands the partitions over at once; commits are done.
            self.consumer.close()
        except Exception as e:
            log.warning("closing the Kafka consumer: %s", e)
        self.consumer = None
        log.info("worker %s: stopped (%s)", self.worker_id, self.stats.format())
        return 1 if failed else 0

    def _drain(self, failed: bool) -> bool:
        """Wait for the stopping runner to go idle, keeping the group membership alive;
        returns whether the stop failed."""
        deadline = time.monotonic() + self.shutdown_timeout_s
        idle = False
        while time.monotonic() < deadline:
            try:
                idle = self.runner.wait(timeout=0)
            except RuntimeError:
                return True
            if idle:
                break
            self.consumer.heartbeat(self.poll_timeout_s)
            self._process_completions(stopping=True)
        if not idle and not failed:
            log.error("worker %s: the runner did not stop within %.0fs", self.worker_id, self.shutdown_timeout_s)
            failed = True
        return failed

    def _abort_start(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            try:
                self.runner.close()  # closes the sinks (their producers) too
            except Exception as e:
                log.warning("closing the pipeline: %s", e)

    def _close_clients(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:
                pass
            self.consumer = None
        for closer in (getattr(self.dead_letters, "close", None), getattr(self._store, "close", None)):
            if closer is None:
                continue
            try:
                closer()
            except Exception as e:
                log.warning("closing: %s", e)

    # ----------------------------------------------------------------- main loop

    def _serve(self) -> None:
        c = self.consumer
        while not self._stop_requested.is_set():
            self.runner.wait(timeout=0)  # raises RuntimeError once the pipeline has failed
            self._process_completions()
            self._submit_deferred()
            self._check_dead_letters()
            self._commit()
            free = self._free_slots()
            if free <= 0:
                # Full: keep the membership alive and wait for a job to finish (the
                # next one starts as soon as one does).
                c.heartbeat(self.poll_timeout_s / 2)
                self._wait_completion(self.poll_timeout_s / 2)
                continue
            c.resume()
            records = c.poll(self.poll_timeout_s, max(1, free))
            for tp, msgs in records.items():
                for m in msgs:
                    if self._free_slots() <= 0:
                        # Taken while full (a partition assigned since the last pause):
                        # give it back to the fetcher for later.
                        c.put_back(tp, m.offset)
                        break
                    self._take(tp, m)

    def _free_slots(self) -> int:
        return self.runner.max_streams - len(self.runner.running()) - len(self.table.deferred())

    # ----------------------------------------------------------------- jobs in

    def _take(self, tp, m) -> None:
        from vmstream.pipeline.assembly import with_live_options
        from vmstream.stages.sources import source_from_job

        job = self.table.take(tp, m)
        if job is None:
            # Delivered again after the position moved back (e.g. an offset reset):
            # this worker holds or has finished it already.
            log.warning(
                "job %s[%s]@%s: delivered again; already taken, ignoring this copy", tp.topic, tp.partition, m.offset
            )
            return
        self.stats.jobs += 1
        try:
            spec = parse_job(m.value)
            source = self.job_policy.admit(source_from_job(spec), spec["uri"].strip())
            (job.source,) = with_live_options(self.cfg, [source])
        except Exception as e:  # a record's fault, never the worker's end: see take_error
            reason, error = take_error(e)
            log.warning("job %s: %s%s", job.where, "" if reason == "refused" else "bad job message: ", _cut(error))
            self._dead_letter(job, reason, error)
            return
        log.info("job %s: stream %s (%s)", job.where, job.stream_id, job.source.uri)
        self._try_submit(job)

    def _try_submit(self, job: Job) -> None:
        if self.table.deferred_before(job) or job.stream_id in self.runner.running() or time.monotonic() < job.retry_at:
            # Another job of this stream is still in the runner (e.g. cancelled by a
            # rebalance and not finished yet): this one starts after it.
            job.state = "deferred"
            return
        job.state = "running"
        job.store_failed = False
        try:
            self.runner.submit(job.source, on_done=functools.partial(self._on_done, job))
        except ValueError:  # the stream got into the runner in between
            job.state = "deferred"

    def _submit_deferred(self) -> None:
        for job in self.table.deferred():
            if job.revoked:
                continue
            self._try_submit(job)

    # ----------------------------------------------------------------- jobs out

    def _on_done(self, job: Job, source, status: str, error: Optional[str]) -> None:
        # The runner's sink thread: hand over to the main thread.
        self.table.complete(job, status, error)
        self._completed.put(job)

    def _process_completions(self, stopping: bool = False) -> None:
        while True:
            try:
                job = self._completed.get_nowait()
            except queue.Empty:
                return
            self._completion(job, stopping)

    def _wait_completion(self, timeout_s: float) -> None:
        try:
            job = self._completed.get(timeout=timeout_s)
        except queue.Empty:
            return
        self._completion(job, stopping=False)

    def _completion(self, job: Job, stopping: bool) -> None:
        if job.revoked:
            return  # its partition went to another worker, which runs it again
        status = job.status
        if status in ("ok", "truncated"):
            log.info("job %s: stream %s done (%s)", job.where, job.stream_id, status)
            self._finish(job)
        elif status in ("failed", "error") and job.store_failed:
            log.warning("job %s: %s; retrying in %.0fs", job.where, job.error, self.retry_backoff_s)
            self.stats.retried += 1
            job.state, job.retry_at = "deferred", time.monotonic() + self.retry_backoff_s
        elif status in ("failed", "error"):
            log.warning("job %s: stream %s %s: %s", job.where, job.stream_id, status, job.error)
            self._dead_letter(job, failure_reason(status, job.error), job.error or status)
        elif status == "stopped":
            if not stopping and not self._stop_requested.is_set():
                # Not asked for: run it again (it resumes from its snapshot).
                job.state, job.retry_at = "deferred", time.monotonic() + self.retry_backoff_s
                self.stats.retried += 1
            # else: left uncommitted; whoever owns the partition next resumes it
        else:
            log.error("job %s: unknown status %r; leaving it uncommitted", job.where, status)

    def _finish(self, job: Job) -> None:
        self.table.finish(job)
        self.stats.done += 1

    def _dead_letter(self, job: Job, reason: str, error: str) -> None:
        self.dead_letters.send(job, reason, error)
        self.stats.dead_lettered += 1

    def _check_dead_letters(self) -> None:
        """Dead-lettered jobs count as done once the dead-letter topic has them."""
        for job in self.dead_letters.acknowledged():
            log.info("job %s: in the dead-letter topic %s", job.where, self.topics.dead_letter)
            self._finish(job)

    # ----------------------------------------------------------------- commits

    def _commit(self, final: bool = False) -> None:
        """Commit each partition past its done jobs (only once their results are
        durable: see the package doc); what fails stays pending for the next try."""
        offsets = self.table.commit_offsets()
        if not offsets or not self.consumer.commit(offsets, final=final):
            return
        self.table.committed(offsets)
        self.stats.commits += 1
        log.debug("committed %s", fmt_offsets(offsets))
