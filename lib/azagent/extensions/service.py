"""The extension handler's loop: goal state in, handler operations run, status out.

:meth:`Service.run_once` is one pass, testable without time: fetch the goal
state (the WireServer's, and the HostGAPlugin's vmSettings with
``If-None-Match``; :func:`goalstate.choose` decides which one wins), fetch the
goal state's certificates when protected settings name one not stored, and
only on a new extensions goal state (or the first pass after a start: enable
again) run the handler operations of EXTENSIONS.md section 5 through an
:class:`~azagent.extensions.executor.Executor`. A higher dependencyLevel
waits for the lower ones to reach a terminal status (``ordering``) across
passes, never inside one. Every pass reads each extension's status file
(``reporting``) and uploads the aggregate status when it changed and at
least every 30 s: through the HostGAPlugin's ``/status``, else directly to
the SAS URL (``channel`` talks to the fabric; ``daemon`` runs the passes
under systemd).

What makes a handler ready to run ("<Lib.Dir>/<Name>-<Version>" unpacked,
with HandlerEnvironment.json) is an :data:`Installer`; the package module
provides the real one. Under ``--root`` the commands see the paths under the
root. A handler's failure is an error status for that handler alone; a
fabric failure is retried on the next pass (a package the fabric did not
deliver too, with a back-off, within the same goal state); nothing secret (protected
settings, SAS URLs) reaches a log.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from azagent import __version__
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.extensions import (
    environment,
    events,
    goalstate,
    naming,
    ordering,
    reporting,
    status,
)
from azagent.extensions import handler as manifests
from azagent.extensions import state as saved
from azagent.extensions.channel import Fabric
from azagent.extensions.executor import Executor, Operation, Outcome
from azagent.extensions.goalstate import Extension, ExtensionsGoalState, Handler
from azagent.extensions.reporting import DISABLED_MESSAGE
from azagent.fsutil import atomic_write, ensure_dir, read_bytes_limited
from azagent.journal import log
from azagent.redact import redact

UPLOAD_INTERVAL = 30.0  # status goes up at least this often
VM_SETTINGS_RETRY = 6 * 3600.0  # after a 404, ask the HostGAPlugin again this much later
MAX_CERTIFICATE_FETCHES = 3
# A handler whose manifest or package could not be had is tried again on the
# next pass, then after a back-off doubling up to this (same goal state).
INSTALL_RETRY_MAX = 600.0
_RETRIED_CODES = frozenset({status.CODE_MANIFEST_DOWNLOAD, status.CODE_PACKAGE_DOWNLOAD})
MAX_OUTPUT = 3200
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Package:
    """A handler version made ready under Lib.Dir by an :data:`Installer`."""

    version: str
    directory: Path


class InstallError(AzagentError):
    """The package of a handler could not be made ready; ``code`` is its status code."""

    def __init__(self, reason: str, code: int = status.CODE_PACKAGE_DOWNLOAD) -> None:
        super().__init__(reason)
        self.code = code


# Makes "<Lib.Dir>/<Name>-<Version>" ready for the goal state's handler (manifest,
# version pick, download, unpack, HandlerEnvironment.json, config/ and status/).
Installer = Callable[[Handler], Package]


class _HandlerFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the service -------------------------------------------------------------------


@dataclass
class _Prepared:
    version: str
    directory: Path
    manifest: manifests.HandlerManifest


_extension_key = reporting.extension_key


class Service:
    """One extension handler; :meth:`run_once` is a pass of its loop."""

    def __init__(
        self,
        ctx: Context,
        executor: Executor,
        installer: Installer,
        *,
        fabric: Optional[Fabric] = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.executor = executor
        self.installer = installer
        self.fabric = fabric or Fabric(ctx)
        self.monotonic = monotonic
        self.enabled = ctx.config.get_bool("Extensions.Enabled")
        self.timeout_limit = ctx.config.get_int("Extensions.OperationTimeout")
        self.state = saved.load(ctx.lib_dir)
        self.goal: Optional[ExtensionsGoalState] = None
        self.goal_status: Optional[status.GoalStateStatus] = None
        self.certificate_fetches: dict[str, int] = {}
        self.uploaded: Optional[bytes] = None  # the last status blob, timestamps at _EPOCH
        self._saved: Optional[bytes] = None  # the state document last written
        self.uploaded_at = float("-inf")
        self._in_flight: Optional[set[str]] = None
        self._prepared: dict[str, Optional[_Prepared]] = {}
        # Handlers whose package the fabric did not deliver, tried again at _retry_at.
        self._install_failed: set[str] = set()
        # Extensions of higher dependency levels waiting for the lower ones to finish.
        self.waiting: Optional[ordering.Waiting] = None
        self._retry_at = 0.0
        self._retry_gap = 0.0
        host = urlsplit(ctx.endpoint("WireServer")).hostname
        self.wire_address = host or ""
        self.log_root = ctx.path(ctx.config.get_str("Extension.LogDir") or "/var/log/azure")
        self.summary = "starting"
        self.tick: Callable[[], object] = lambda: None  # the watchdog, before each operation

    # -- one pass --------------------------------------------------------------

    def run_once(self) -> str:
        """One pass; never raises for the fabric's or a handler's failure. A summary."""
        try:
            config, vm_settings = self.fabric.refresh()
        except AzagentError as e:
            log.warning("the goal state could not be fetched (%s); retrying next pass", e)
        except Exception as e:
            log.error("fetching the goal state failed: %s", redact(f"{type(e).__name__}: {e}"))
        else:
            chosen = goalstate.choose(config, vm_settings, self.goal)
            if chosen is not None and (self.goal is None or chosen.id != self.goal.id):
                self._act(chosen)
            else:
                self._retry_installs()
                self._resume()
        try:
            self._report()
        except AzagentError as e:
            log.warning("status upload failed (%s); retrying next pass", e)
        except Exception as e:
            log.error("status upload failed: %s", redact(f"{type(e).__name__}: {e}"))
        now = time.time()
        for name in self.state.handlers:  # telemetry nobody collects: kept bounded
            events.prune(self.log_root, name, now=now)
        return self.summary

    def _act(self, goal: ExtensionsGoalState) -> None:
        restart = self.goal is None
        self.goal = goal
        log.info("acting on extensions goal state %s (%s)", goal.id, goal.channel)
        self._prepared = {}
        self._install_failed = set()
        self._retry_at, self._retry_gap = self.monotonic(), 0.0
        code, message = status.GOAL_STATE_SUCCESS, ""
        unsupported = goalstate.unsupported_features(goal)
        if not self.enabled:
            message = DISABLED_MESSAGE
        elif unsupported:
            code = status.GOAL_STATE_UNSUPPORTED_FEATURES
            message = f"unsupported features: {', '.join(unsupported)}"
        else:
            self._certificates(goal)
            self._forget_vanished(goal)
            self._run_handlers(goal, restart)
        self.goal_status = status.GoalStateStatus(
            goal.svd_seq_no,
            "Success" if code == status.GOAL_STATE_SUCCESS else "Failed",
            code,
            message,
            datetime.now(timezone.utc),
        )
        self.state.goal_state_id = goal.id
        self.state.incarnation = goal.incarnation
        self.state.etag = goal.etag
        self.state.channel = goal.channel
        self.state.source = goal.source
        self.state.acted = saved.now_text()
        self._save()

    def _retry_installs(self) -> None:
        """The handlers of this goal state whose package the fabric did not deliver, again."""
        goal = self.goal
        if goal is None or not self._install_failed or self.monotonic() < self._retry_at:
            return
        names, self._install_failed = self._install_failed, set()
        for name in names:
            self._prepared.pop(name, None)
        log.info("trying again to install: %s", ", ".join(sorted(names)))
        self._run_handlers(goal, restart=False, only=names)
        if self._install_failed:
            self._retry_gap = min(max(2 * self._retry_gap, 5.0), INSTALL_RETRY_MAX)
            self._retry_at = self.monotonic() + self._retry_gap
        self._save()

    def _save(self) -> None:
        data = self.state.to_json()
        if data == self._saved:
            return  # an idle pass writes (and fsyncs) nothing
        try:
            saved.save(self.ctx.lib_dir, self.state, data)
            self._saved = data
        except OSError as e:
            log.warning("cannot save the extension state: %s", e)

    def _certificates(self, goal: ExtensionsGoalState) -> None:
        from azagent.certstore import CertStore, normalize_thumbprint

        wanted = {
            normalize_thumbprint(e.thumbprint): True
            for h in goal.handlers
            for e in h.extensions
            if e.thumbprint
        }
        store = CertStore.of(self.ctx)
        try:
            if not wanted or not store.missing(wanted):
                return
        except AzagentError as e:
            log.warning("certificate thumbprint unusable: %s", e)
            return
        tries = self.certificate_fetches.get(goal.id, 0)
        if tries >= MAX_CERTIFICATE_FETCHES:
            return
        self.certificate_fetches[goal.id] = tries + 1
        try:
            self.fabric.fetch_certificates()
        except AzagentError as e:
            log.warning("the goal state's certificates could not be fetched: %s", e)

    def _forget_vanished(self, goal: ExtensionsGoalState) -> None:
        names = {h.name for h in goal.handlers}
        for name in [n for n in self.state.handlers if n not in names]:
            record = self.state.handlers.pop(name)
            log.info("%s left the goal state: deleting its directory without uninstall", name)
            self._delete(name, record.version)
            self.executor.discard(name)

    def _handler_dir(self, name: str, version: str) -> Path:
        return self.ctx.lib_dir / naming.handler_dir_name(name, version)

    def _delete(self, name: str, version: Optional[str]) -> None:
        if version is None:
            return
        try:
            shutil.rmtree(self._handler_dir(name, version))
        except FileNotFoundError:
            pass
        except (OSError, naming.NameRefused) as e:
            log.warning("cannot delete the directory of %s %s: %s", name, version, e)

    def _run_handlers(
        self, goal: ExtensionsGoalState, restart: bool, only: Optional[set[str]] = None
    ) -> None:
        deadline = self.monotonic() + ordering.DEPENDENCY_TIMEOUT
        self._walk(goal, goalstate.processing_order(goal), restart, deadline, only=only)

    def _walk(
        self,
        goal: ExtensionsGoalState,
        items: Sequence[ordering.Item],
        restart: bool,
        deadline: float,
        *,
        only: Optional[set[str]] = None,
        lower: Sequence[ordering.Item] = (),
    ) -> None:
        """Run ``items`` in order; a higher level waits for ``lower`` (see ``ordering``)."""
        before = self.waiting
        if only is None:
            self.waiting = None
        top = ordering.top_level(items)
        blocked: Optional[tuple[int, str]] = None  # from this level up: an error instead
        awaited = list(lower)
        uninstalled: set[str] = set()
        for index, (handler, extension) in enumerate(items):
            if only is not None and handler.name not in only:
                continue
            record = self.state.handler(handler.name)
            record.multi_config = handler.is_multi_config
            key = _extension_key(handler, extension)
            level = ordering.level_of((handler, extension))
            if handler.error is not None:
                record.error = handler.error
                continue
            if handler.state == goalstate.UNINSTALL:
                if handler.name not in uninstalled:
                    uninstalled.add(handler.name)
                    self._uninstall(handler, record)
                continue
            active = ordering.is_active((handler, extension))
            if active and awaited and not blocked and level > ordering.level_of(awaited[-1]):
                verdict = ordering.judge(
                    awaited, self._terminal, now=self.monotonic(), deadline=deadline
                )
                if not verdict.run and verdict.blocked is None:
                    rest = tuple(items[index:])
                    self.waiting = ordering.Waiting(
                        goal.id, rest, tuple(awaited), deadline, restart
                    )
                    if before is None or before.message() != self.waiting.message():
                        log.info("dependencyLevel %d and up: %s", level, self.waiting.message())
                    return
                if verdict.blocked is not None and blocked is None:
                    blocked = (level, verdict.blocked)
                awaited = []
            if active and blocked is not None and level >= blocked[0]:
                self._fail(record, key, status.CODE_PROCESSING_ERROR, blocked[1])
                continue
            try:
                prepared = self._prepare(handler, record)
                if active:
                    self._enable(handler, extension, record, prepared, restart)
                else:
                    self._disable(handler, extension, record, prepared)
            except _HandlerFailed as e:
                self._fail(record, key, e.code, e.message)
                if active and level < top and blocked is None:
                    why = f"the extension it depends on, {ordering.name_of((handler, extension))}"
                    blocked = (level + 1, f"{why} (dependencyLevel {level}), failed")
                continue
            if only is None and ordering.awaited((handler, extension), top):
                awaited.append((handler, extension))

    def _resume(self) -> None:
        """The rest of the goal state, once the lower levels it waits for have finished."""
        waiting, goal = self.waiting, self.goal
        if waiting is None or goal is None or goal.id != waiting.goal_id:
            return
        self._walk(goal, waiting.items, waiting.restart, waiting.deadline, lower=waiting.lower)
        self._save()

    def _terminal(self, item: ordering.Item) -> str:
        """The status a dependency wait sees: the handler's own error, else its status file."""
        handler, extension = item
        record = self.state.handlers.get(handler.name)
        if record is None or record.version is None:
            return status.ERROR
        entry = record.extension(_extension_key(handler, extension))
        if entry.status == status.ERROR and entry.code >= status.CODE_PROCESSING_ERROR:
            return status.ERROR
        seq_no = extension.seq_no if extension is not None else environment.DEFAULT_SEQ_NO
        return reporting.read_status(self.ctx.lib_dir, handler, extension, record, seq_no).status

    def _fail(self, record: saved.HandlerRecord, key: str, code: int, message: str) -> None:
        entry = record.extension(key)
        entry.status, entry.code, entry.message = status.ERROR, code, message
        log.warning("%s: %s", key, redact(message))

    def _prepare(self, handler: Handler, record: saved.HandlerRecord) -> _Prepared:
        """The handler's package (installed or updated to the goal state's version)."""
        if handler.name in self._prepared:
            found = self._prepared[handler.name]
            if found is None:
                raise _HandlerFailed(status.CODE_PROCESSING_ERROR, record.error or "not prepared")
            return found
        self._prepared[handler.name] = None
        try:
            package = self.installer(handler)
        except InstallError as e:
            record.error = e.reason
            if e.code in _RETRIED_CODES:
                self._install_failed.add(handler.name)
            raise _HandlerFailed(e.code, e.reason) from None
        except AzagentError as e:
            record.error = e.reason
            self._install_failed.add(handler.name)
            raise _HandlerFailed(status.CODE_PACKAGE_DOWNLOAD, e.reason) from None
        prepared = _Prepared(package.version, package.directory, self._manifest(package.directory))
        record.error = None
        if record.version is not None and record.version != package.version:
            if record.state != saved.NOT_INSTALLED:
                self._update(handler, record, prepared)
            else:
                self._delete(handler.name, record.version)
        record.version = package.version
        self._prepared[handler.name] = prepared
        return prepared

    def _manifest(self, directory: Path) -> manifests.HandlerManifest:
        try:
            data = read_bytes_limited(
                directory / "HandlerManifest.json", manifests.MAX_HANDLER_MANIFEST
            )
            return manifests.parse_handler_manifest(data)
        except (OSError, ValueError) as e:
            raise _HandlerFailed(
                status.CODE_HANDLER_MANIFEST_MISSING, f"HandlerManifest.json: {e}"
            ) from None
        except manifests.HandlerManifestError as e:
            raise _HandlerFailed(status.CODE_HANDLER_MANIFEST_INVALID, e.reason) from None

    def _operation(
        self,
        name: str,
        prepared: _Prepared,
        operation: str,
        extension: Optional[Extension],
        multi: bool,
        **extra: object,
    ) -> Operation:
        directory = str(prepared.directory)
        try:
            command = prepared.manifest.command(operation)
        except manifests.HandlerManifestError as e:
            raise _HandlerFailed(status.CODE_HANDLER_MANIFEST_INVALID, e.reason) from None
        variables = environment.command_environment(
            operation=operation,
            handler_dir=directory,
            version=prepared.version,
            wire_address=self.wire_address,
            extension=extension,
            multi_config=multi,
            **extra,  # type: ignore[arg-type]
        )
        return Operation(
            handler=name,
            version=prepared.version,
            operation=operation,
            shell_line=command.shell_line(directory),
            cwd=directory,
            environment=variables,
            timeout=environment.operation_timeout(operation, self.timeout_limit),
            extension=extension.name if multi and extension is not None else None,
            sequence=extension.seq_no if extension is not None else 0,
            cpu_quota_percent=prepared.manifest.cpu_quota,
            log_dir=str(self.log_root / name),
        )

    def _run(self, operation: Operation, entry: Optional[saved.ExtensionRecord]) -> Outcome:
        if self._in_flight is None:
            try:
                self._in_flight = set(self.executor.running())
            except AzagentError as e:
                log.warning("cannot list operations in flight: %s", e)
                self._in_flight = set()
        outcome: Optional[Outcome] = None
        self.tick()  # the watchdog: an operation may take up to its timeout
        if operation.key in self._in_flight:
            self._in_flight.discard(operation.key)
            log.info(
                "%s is still running from before a restart: waiting for it",
                operation.key,
            )
            outcome = self.executor.wait(operation.key, operation.timeout)
        if outcome is None:
            outcome = self.executor.run(operation)
        log.info(
            "%s %s %s: exit status %s in %.1f s%s",
            operation.handler,
            operation.version,
            operation.operation,
            "timeout" if outcome.timed_out else outcome.exit_status,
            outcome.duration,
            f" (unit {outcome.unit})" if outcome.unit else "",
        )
        if entry is not None:
            entry.last = saved.OperationRecord(
                operation.operation,
                outcome.exit_status,
                outcome.timed_out,
                round(outcome.duration, 3),
                outcome.unit,
                redact(outcome.reason),
                saved.now_text(),
            )
        return outcome

    def _check(self, outcome: Outcome, code: int) -> None:
        if outcome.succeeded:
            return
        op = outcome.operation.operation
        if outcome.timed_out:
            why, code = (
                f"{op} timed out after {outcome.operation.timeout:.0f} s",
                status.CODE_TIMEOUT,
            )
        else:
            why = f"{op} failed with exit status {outcome.exit_status}"
        details = " ".join(part for part in (outcome.reason, outcome.output[:MAX_OUTPUT]) if part)
        raise _HandlerFailed(code, redact(f"{why}: {details}" if details else why))

    def _settings(self, prepared: _Prepared, extension: Optional[Extension], multi: bool) -> None:
        relative, content = environment.settings_file(extension, multi_config=multi)
        path = Path(environment.inside(str(prepared.directory), relative))
        ensure_dir(path.parent, mode=0o700)
        atomic_write(path, content, mode=0o600)

    def _set_state(
        self,
        prepared: _Prepared,
        extension: Optional[Extension],
        multi: bool,
        value: str,
    ) -> None:
        try:
            saved.write_handler_state(
                prepared.directory,
                extension if multi else None,
                multi_config=multi,
                value=value,
            )
        except (OSError, AzagentError) as e:
            log.warning("cannot write HandlerState in %s: %s", prepared.directory, e)

    def _enable(
        self,
        handler: Handler,
        extension: Optional[Extension],
        record: saved.HandlerRecord,
        prepared: _Prepared,
        restart: bool,
    ) -> None:
        multi = handler.is_multi_config
        entry = record.extension(_extension_key(handler, extension))
        seq_no = extension.seq_no if extension is not None else environment.DEFAULT_SEQ_NO
        if not restart and entry.state == saved.ENABLED and entry.seq_no == seq_no:
            return  # nothing new for this extension
        try:
            self._settings(prepared, extension, multi)
        except (OSError, AzagentError) as e:
            raise _HandlerFailed(
                status.CODE_PROCESSING_ERROR, f"cannot write the settings: {e}"
            ) from None
        if record.state == saved.NOT_INSTALLED:
            install = self._operation(handler.name, prepared, manifests.INSTALL, extension, multi)
            self._check(self._run(install, entry), status.CODE_INSTALL)
            record.state = saved.INSTALLED
            self._set_state(prepared, None, False, saved.INSTALLED)
        enable = self._operation(handler.name, prepared, manifests.ENABLE, extension, multi)
        entry.seq_no = seq_no
        entry.status, entry.code, entry.message = None, 0, None
        self._check(self._run(enable, entry), status.CODE_ENABLE)
        entry.state = record.state = saved.ENABLED
        self._set_state(prepared, extension, multi, saved.ENABLED)

    def _disable(
        self,
        handler: Handler,
        extension: Optional[Extension],
        record: saved.HandlerRecord,
        prepared: _Prepared,
    ) -> None:
        multi = handler.is_multi_config
        entry = record.extension(_extension_key(handler, extension))
        if entry.state != saved.ENABLED:
            return
        operation = self._operation(handler.name, prepared, manifests.DISABLE, extension, multi)
        self._check(self._run(operation, entry), status.CODE_DISABLE)
        entry.state = saved.DISABLED
        if not any(e.state == saved.ENABLED for e in record.extensions.values()):
            record.state = saved.DISABLED
        self._set_state(prepared, extension, multi, saved.DISABLED)

    def _uninstall(self, handler: Handler, record: saved.HandlerRecord) -> None:
        """state=uninstall: disable, uninstall (errors logged), delete the directory."""
        if record.version is None:
            self.state.handlers.pop(handler.name, None)
            return
        directory = self._handler_dir(handler.name, record.version)
        try:
            prepared = _Prepared(record.version, directory, self._manifest(directory))
            multi = handler.is_multi_config
            for extension in handler.extensions or (None,):
                entry = record.extensions.get(_extension_key(handler, extension))
                if entry is not None and entry.state == saved.ENABLED:
                    op = self._operation(
                        handler.name, prepared, manifests.DISABLE, extension, multi
                    )
                    self._run(op, entry)
            # A single-config handler's uninstall reads the settings of the goal
            # state's sequence number, as its disable did; multi-config: once per handler.
            current = handler.extensions[0] if handler.extensions and not multi else None
            self._run(
                self._operation(handler.name, prepared, manifests.UNINSTALL, current, False),
                None,
            )
        except _HandlerFailed as e:
            log.warning("uninstalling %s: %s", handler.name, redact(e.message))
        self._delete(handler.name, record.version)
        self.executor.discard(handler.name)
        self.state.handlers.pop(handler.name, None)

    def _update(self, handler: Handler, record: saved.HandlerRecord, new: _Prepared) -> None:
        """Old disable, copy mrseq and status/, new update, old uninstall, delete, new install."""
        assert record.version is not None
        old_dir = self._handler_dir(handler.name, record.version)
        old = _Prepared(record.version, old_dir, self._manifest(old_dir))
        multi = handler.is_multi_config
        tolerate = new.manifest.continue_on_update_failure
        codes: dict[str, Optional[int]] = {}
        for key, entry in record.extensions.items():
            if entry.state != saved.ENABLED:
                continue
            extension = handler_extension(handler, key)
            outcome = self._run(
                self._operation(handler.name, old, manifests.DISABLE, extension, multi),
                entry,
            )
            codes[key] = outcome.exit_status
            if not outcome.succeeded and not tolerate:
                self._check(outcome, status.CODE_UPDATE)
        for item in ("mrseq", environment.STATUS_DIR):
            source, target = old_dir / item, new.directory / item
            try:
                if source.is_dir():
                    shutil.copytree(source, target, dirs_exist_ok=True)
                elif source.is_file():
                    shutil.copy2(source, target)
            except OSError as e:
                log.warning("update of %s: cannot copy %s: %s", handler.name, item, e)
        update = self._operation(
            handler.name,
            new,
            manifests.UPDATE,
            None,
            multi,
            updating_from_version=old.version,
            disable_exit_codes=codes,
        )
        self._check(self._run(update, None), status.CODE_UPDATE)
        outcome = self._run(
            self._operation(handler.name, old, manifests.UNINSTALL, None, False), None
        )
        if not outcome.succeeded and not tolerate:
            self._check(outcome, status.CODE_UPDATE)
        self._delete(handler.name, old.version)
        record.version = new.version
        for entry in record.extensions.values():
            if entry.state == saved.ENABLED:
                entry.state = saved.INSTALLED
        if new.manifest.update_with_install:
            install = self._operation(
                handler.name,
                new,
                manifests.INSTALL,
                None,
                False,
                uninstall_exit_code=outcome.exit_status,
            )
            self._check(self._run(install, None), status.CODE_INSTALL)
        record.state = saved.INSTALLED
        self._set_state(new, None, False, saved.INSTALLED)

    # -- status ----------------------------------------------------------------

    def handler_statuses(self) -> list[status.HandlerStatus]:
        return reporting.handler_statuses(
            self.goal, self.state, self.ctx.lib_dir, enabled=self.enabled, waiting=self.waiting
        )

    def _report(self) -> None:
        goal = self.goal
        handlers = self.handler_statuses()
        self.summary = reporting.summary(goal, handlers)
        self._save()
        if goal is None or not goal.status_upload_blob:
            return
        agent = status.AgentStatus(
            __version__, socket.gethostname(), os.uname().sysname, os.uname().release
        )
        fast_track = goal.channel == goalstate.HOSTGAPLUGIN

        def blob(now: datetime) -> bytes:
            goal_status = self.goal_status
            if goal_status is not None and now == _EPOCH:
                goal_status = status.GoalStateStatus(
                    goal_status.svd_seq_no,
                    goal_status.status,
                    goal_status.code,
                    goal_status.message,
                    _EPOCH,
                )
            return status.status_blob(
                agent=agent,
                handlers=handlers,
                goal_state=goal_status,
                now=now,
                fast_track=fast_track,
            )

        # The blob itself (a few KB) is the fingerprint: comparing it needs no digest.
        fingerprint = blob(_EPOCH)
        if fingerprint == self.uploaded and self.monotonic() - self.uploaded_at < UPLOAD_INTERVAL:
            return
        now = datetime.now(timezone.utc)
        requests = status.blob_requests(
            blob(now),
            url=goal.status_upload_blob,
            blob_type=goal.status_blob_type,
            now=now,
        )
        via = self.fabric.upload(requests)
        self.uploaded, self.uploaded_at = fingerprint, self.monotonic()
        self.state.last_upload, self.state.last_upload_via = saved.now_text(), via
        self._save()
        log.debug("status uploaded (%s)", via)


def handler_extension(handler: Handler, key: str) -> Optional[Extension]:
    for extension in handler.extensions:
        if _extension_key(handler, extension) == key:
            return extension
    return None
