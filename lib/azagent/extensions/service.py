"""The extension handler's loop: goal state in, handler operations run, status out.

:meth:`Service.run_once` is one pass, testable without time: fetch the goal
state (the WireServer's, and the HostGAPlugin's vmSettings with
``If-None-Match``; :func:`goalstate.choose` decides which one wins), fetch the
goal state's certificates when protected settings name one not stored, and
only on a new extensions goal state (or the first pass after a start: enable
again) run the handler operations of EXTENSIONS.md section 5 through an
:class:`~azagent.extensions.executor.Executor`. Every pass reads each
extension's status file and uploads the aggregate status when it changed and
at least every 30 s: through the HostGAPlugin's ``/status``, else directly to
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

import hashlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from azagent import __version__
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.extensions import environment, goalstate, naming, status
from azagent.extensions import handler as manifests
from azagent.extensions import state as saved
from azagent.extensions.channel import Fabric
from azagent.extensions.executor import Executor, Operation, Outcome
from azagent.extensions.goalstate import Extension, ExtensionsGoalState, Handler
from azagent.fsutil import atomic_write, ensure_dir, read_bytes_limited
from azagent.redact import redact

log = logging.getLogger("azagent")

UPLOAD_INTERVAL = 30.0  # status goes up at least this often
VM_SETTINGS_RETRY = 6 * 3600.0  # after a 404, ask the HostGAPlugin again this much later
MAX_CERTIFICATE_FETCHES = 3
# A handler whose manifest or package could not be had is tried again on the
# next pass, then after a back-off doubling up to this (same goal state).
INSTALL_RETRY_MAX = 600.0
_RETRIED_CODES = frozenset({status.CODE_MANIFEST_DOWNLOAD, status.CODE_PACKAGE_DOWNLOAD})
MAX_OUTPUT = 3200
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
DISABLED_MESSAGE = (
    "Extensions.Enabled=n in waagent.conf: this VM does not run extensions"
    " (set Extensions.Enabled=y to run them)"
)


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


def _extension_key(handler: Handler, extension: Optional[Extension]) -> str:
    return extension.name if extension is not None and handler.is_multi_config else handler.name


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
        self.uploaded: Optional[bytes] = None
        self.uploaded_at = float("-inf")
        self._in_flight: Optional[set[str]] = None
        self._prepared: dict[str, Optional[_Prepared]] = {}
        # Handlers whose package the fabric did not deliver, tried again at _retry_at.
        self._install_failed: set[str] = set()
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
        try:
            self._report()
        except AzagentError as e:
            log.warning("status upload failed (%s); retrying next pass", e)
        except Exception as e:
            log.error("status upload failed: %s", redact(f"{type(e).__name__}: {e}"))
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
        try:
            saved.save(self.ctx.lib_dir, self.state)
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
        failed_level: Optional[int] = None
        uninstalled: set[str] = set()
        for handler, extension in goalstate.processing_order(goal):
            if only is not None and handler.name not in only:
                continue
            record = self.state.handler(handler.name)
            record.multi_config = handler.is_multi_config
            key = _extension_key(handler, extension)
            level = extension.dependency_level if extension is not None else 0
            if handler.error is not None:
                record.error = handler.error
                continue
            if handler.state == goalstate.UNINSTALL:
                if handler.name not in uninstalled:
                    uninstalled.add(handler.name)
                    self._uninstall(handler, record)
                continue
            active = handler.state == goalstate.ENABLED and (
                extension is None or extension.state == goalstate.ENABLED
            )
            if active and failed_level is not None and level > failed_level:
                self._fail(
                    record,
                    key,
                    status.CODE_PROCESSING_ERROR,
                    "an extension it depends on failed",
                )
                continue
            try:
                prepared = self._prepare(handler, record)
                if active:
                    self._enable(handler, extension, record, prepared, restart)
                else:
                    self._disable(handler, extension, record, prepared)
            except _HandlerFailed as e:
                self._fail(record, key, e.code, e.message)
                if active and level > 0:
                    failed_level = level if failed_level is None else min(failed_level, level)

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
        goal = self.goal
        if goal is None:
            return []
        result: list[status.HandlerStatus] = []
        for handler in goal.handlers:
            if handler.state == goalstate.UNINSTALL:
                continue
            record = self.state.handlers.get(handler.name)
            version = (record.version if record else None) or handler.version
            if not self.enabled:
                result.extend(
                    status.error_report(
                        handler,
                        version=version,
                        code=status.CODE_PROCESSING_ERROR,
                        message=DISABLED_MESSAGE,
                    )
                )
                continue
            error = handler.error or (record.error if record else None)
            if error is not None or record is None:
                result.extend(
                    status.error_report(
                        handler,
                        version=version,
                        code=status.CODE_PROCESSING_ERROR,
                        message=error or "not processed yet",
                    )
                )
                continue
            for extension in handler.extensions or (None,):
                result.append(self._extension_status(handler, extension, record, version))
        return result

    def _extension_status(
        self,
        handler: Handler,
        extension: Optional[Extension],
        record: saved.HandlerRecord,
        version: str,
    ) -> status.HandlerStatus:
        key = _extension_key(handler, extension)
        entry = record.extension(key)
        seq_no = extension.seq_no if extension is not None else environment.DEFAULT_SEQ_NO
        if entry.status == status.ERROR and entry.code >= status.CODE_PROCESSING_ERROR:
            found = status.ExtensionStatus(key, seq_no, status.ERROR, entry.code, entry.message)
        else:
            found = self._read_status(handler, extension, record, key, seq_no)
            entry.status, entry.code, entry.message = (
                found.status,
                found.code,
                found.message,
            )
        ready = entry.state == saved.ENABLED and found.status != status.ERROR
        state, code, message = status.READY if ready else status.NOT_READY, 0, None
        if found.status == status.ERROR:
            code, message = (
                found.code,
                status.truncate(found.message, status.MAX_MESSAGE),
            )
        beat = self._heartbeat(handler, record) if ready else None
        if beat is not None:
            state, code, message = beat.status, beat.code, beat.message
        return status.HandlerStatus(
            handler.name, version, state, code, message, found, handler.is_multi_config
        )

    def _heartbeat(
        self, handler: Handler, record: saved.HandlerRecord
    ) -> Optional[status.Heartbeat]:
        """heartbeat.log, when HandlerManifest.json asks for it (reportHeartbeat)."""
        assert record.version is not None
        directory = self._handler_dir(handler.name, record.version)
        try:
            if not self._manifest(directory).report_heartbeat:
                return None
        except _HandlerFailed:
            return None
        path = directory / environment.HEARTBEAT
        try:
            age = time.time() - path.stat().st_mtime
            data: Optional[bytes] = read_bytes_limited(path, status.MAX_HEARTBEAT + 1)
        except FileNotFoundError:
            age, data = 0.0, None
        except (OSError, ValueError):
            age, data = 0.0, b""
        return status.parse_heartbeat(data, age)

    def _read_status(
        self,
        handler: Handler,
        extension: Optional[Extension],
        record: saved.HandlerRecord,
        key: str,
        seq_no: int,
    ) -> status.ExtensionStatus:
        assert record.version is not None
        directory = self._handler_dir(handler.name, record.version)
        relative = environment.status_file(extension, multi_config=handler.is_multi_config)
        try:
            path = Path(environment.inside(str(directory), relative))
            with open(path, "rb") as f:
                data: Optional[bytes] = f.read(status.MAX_STATUS_READ + 1)
        except FileNotFoundError:
            data = None
        except (OSError, AzagentError) as e:
            return status.ExtensionStatus(
                key, seq_no, status.ERROR, status.CODE_STATUS_INVALID, str(e)
            )
        return status.parse_status_file(data, name=key, seq_no=seq_no)

    def _report(self) -> None:
        goal = self.goal
        handlers = self.handler_statuses()
        self.summary = _summary(goal, handlers)
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

        fingerprint = hashlib.sha256(blob(_EPOCH)).digest()
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


def _summary(goal: Optional[ExtensionsGoalState], handlers: list[status.HandlerStatus]) -> str:
    if goal is None:
        return "no extensions goal state yet"
    name = (
        f"incarnation {goal.incarnation}" if goal.incarnation is not None else f"etag {goal.etag}"
    )
    counts: dict[str, int] = {}
    for entry in handlers:
        value = entry.extension.status if entry.extension is not None else status.ERROR
        word = "enabled" if value in (status.SUCCESS, status.WARNING) else value
        counts[word] = counts.get(word, 0) + 1
    parts = [f"{n} {'handler' if n == 1 else 'handlers'} {w}" for w, n in sorted(counts.items())]
    return f"{name}: {', '.join(parts) or 'no handlers'}"
