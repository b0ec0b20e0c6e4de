"""MLflowReceiver: saves tracking records into MLflow, one MLflow run per site.

With no ``tracking_uri`` the store is ``sqlite:///<run dir>/mlflow.db`` (as NVFlare 2.9's code does; its recipe
docstring says "file store"); artifacts (texts) go to ``<run dir>/<artifact_location or "artifacts">``. Read
them back with ``mlflow.tracking.MlflowClient(tracking_uri=...)`` or ``mlflow ui --backend-store-uri ...``.
It needs the ``mlflow`` package (``pip install mlflow`` or ``flarelite[mlflow]``), imported when the run starts.

flarelite differences: the tracking URI is given to this receiver's own MlflowClients (NVFlare sets it
process-wide with ``mlflow.set_tracking_uri``); a site that was not known at START_RUN gets its run when its
first record arrives; batches are split to MLflow's limits (1000 entries, 100 params, 100 tags); a text's
artifact path must be relative and stay inside the run's artifacts; without a job name (flarelite's runtime does
not pass it to sites) a run is named ``<site>-<job id[:6]>-<run_name>``. A bad entry costs only itself (NVFlare
loses the whole buffered batch with it): names MLflow refuses are dropped when they arrive (checked with
MLflow's own validation), a parameter logged again with another value is dropped (MLflow parameters cannot
change; at most 10,000 parameters per site), and a batch whose content MLflow still refuses is split until only
the refused entries are left out; each of these is logged once per site every 10 s. A record of more than 1000
entries is refused (``check_record_size``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from flarelite import logsafe
from flarelite.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsData, AnalyticsDataType, LogWriterName, TrackConst
from flarelite.apis.dxo import from_shareable
from flarelite.apis.fl_constant import ReservedKey
from flarelite.apis.fl_context import FLContext
from flarelite.apis.shareable import Shareable
from flarelite.app_common.widgets.streaming import AnalyticsReceiver, check_record_size, site_run_dir

DEFAULT_EXPERIMENT_NAME = "FLARE FL Experiment"
DEFAULT_RUN_NAME = "FLARE FL Run"
_MAX_ENTITIES = 1000  # MLflow's log_batch limits
_MAX_PARAMS = 100
_MAX_TAGS = 100
_GROUPS = ("metrics", "params", "tags")
_REFUSED = "INVALID_PARAMETER_VALUE"  # the error code of an MlflowException for content MLflow does not take
MAX_PARAMS_PER_SITE = 10_000  # parameters remembered per site (MLflow parameters cannot change)
_INSTALL_HINT = "pip install mlflow (or pip install 'flarelite[mlflow]')"


def _safe_artifact_path(path: str) -> bool:
    """A relative file path of named parts, none of them ``.``/``..``, without NUL: it stays inside the artifacts."""
    parts = path.replace("\\", "/").split("/")
    return (
        bool(path)
        and "\x00" not in path
        and not os.path.isabs(path)
        and not any(p in (".", "..") for p in parts)
        and parts[-1] != ""
    )


class MLflowReceiver(AnalyticsReceiver):
    """Writes the records it receives to MLflow: one experiment, one run per site, buffered batches."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        kw_args: dict | None = None,
        artifact_location: str | None = None,
        events: list[str] | None = None,
        buffer_flush_time: float = 1,
    ):
        """Record into MLflow.

        Parameters:
            tracking_uri: the MLflow tracking URI; None: ``sqlite:///<run dir>/mlflow.db``.
            kw_args: ``experiment_name`` (default ``"FLARE FL Experiment"``), ``run_name`` (default
                ``"FLARE FL Run"``), ``experiment_tags`` and ``run_tags`` (dicts).
            artifact_location: the artifacts folder, relative to the run dir (default ``"artifacts"``).
            events: the events to record (default ``["fed.analytix_log_stats"]`` only).
            buffer_flush_time: seconds between batches sent to MLflow (the rest is sent at END_RUN).

        Raises:
            TypeError: ``kw_args`` is not a dict, or ``buffer_flush_time`` not a number.
            ValueError: ``buffer_flush_time`` is negative.
        """
        if events is None:
            events = [f"fed.{ANALYTIC_EVENT_TYPE}"]
        super().__init__(events=events)
        if kw_args is not None and not isinstance(kw_args, dict):
            raise TypeError(f"MLflowReceiver: kw_args must be a dict, got {type(kw_args).__name__}")
        if isinstance(buffer_flush_time, bool) or not isinstance(buffer_flush_time, (int, float)):
            raise TypeError(f"MLflowReceiver: buffer_flush_time must be seconds, got {buffer_flush_time!r}")
        if buffer_flush_time < 0:
            raise ValueError(f"MLflowReceiver: buffer_flush_time must be >= 0, got {buffer_flush_time}")
        self.tracking_uri = tracking_uri
        self.kw_args = dict(kw_args or {})
        self.artifact_location = artifact_location if artifact_location is not None else "artifacts"
        self.buffer_flush_time = buffer_flush_time
        self.mlflow_clients: dict[str, Any] = {}
        self.run_ids: dict[str, str] = {}
        self.buffer: dict[str, dict[str, list]] = {}
        self.experiment_id: str | None = None
        self._last_flush: dict[str, float] = {}
        self._entities: Any = None  # mlflow.entities, imported at initialize
        self._client_class: Any = None
        self._uri: str | None = None
        self._job_id = ""
        self._job_name = ""
        self._params: dict[str, dict[str, str]] = {}  # site -> the parameters it logged (MLflow keeps the first)
        self._validate: Any = None  # MLflow's own check of a batch's names and values, if it has one
        self._drop_log = logsafe.RateLimit()

    # setup ----------------------------------------------------------------------------------------------
    def initialize(self, fl_ctx: FLContext) -> None:
        """Import mlflow, create (or find) the experiment and one run per known site.

        Raises:
            RuntimeError: mlflow is not installed (logged by AnalyticsReceiver; nothing is recorded).
            ValueError: ``experiment_tags`` or ``run_tags`` is not a dict.
        """
        try:
            import mlflow.entities as entities
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise RuntimeError(
                f"MLflowReceiver at {fl_ctx.get_identity_name()} needs the mlflow package, which cannot be imported "
                f"({exc}); install it: {_INSTALL_HINT}"
            ) from exc
        self._entities = entities
        self._client_class = MlflowClient
        try:
            from mlflow.utils.validation import _validate_batch_log_data  # checks names without a store

            self._validate = _validate_batch_log_data
        except ImportError:
            self._validate = None  # older or newer MLflow: flush_buffer's splitting still keeps the good entries
        run_dir = site_run_dir(fl_ctx)
        self._uri = self.tracking_uri or f"sqlite:///{os.path.join(os.path.abspath(run_dir), 'mlflow.db')}"
        self._job_id = str(fl_ctx.get_job_id() or "")
        meta = fl_ctx.get_prop(ReservedKey.JOB_META)
        self._job_name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
        art_full_path = os.path.abspath(os.path.join(run_dir, self.artifact_location))
        experiment_name = self.kw_args.get(TrackConst.EXPERIMENT_NAME, DEFAULT_EXPERIMENT_NAME)
        experiment_tags = self._get_tags(TrackConst.EXPERIMENT_TAGS)
        self._get_tags(TrackConst.RUN_TAGS)  # checked now, used per run
        client = MlflowClient(tracking_uri=self._uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            os.makedirs(art_full_path, exist_ok=True)
            self.experiment_id = client.create_experiment(
                experiment_name, artifact_location=_file_uri(art_full_path), tags=experiment_tags
            )
        else:
            self.experiment_id = experiment.experiment_id
        engine = fl_ctx.get_engine()
        get_clients = getattr(engine, "get_clients", None)
        sites = [c.name for c in get_clients()] if callable(get_clients) else [fl_ctx.get_identity_name()]
        for site in sites:
            self._run_for(site)
        self.log_info(fl_ctx, f"MLflow records go to {self._uri} (experiment {experiment_name!r})")

    def _get_tags(self, key: str) -> dict:
        tags = self.kw_args.get(key) or {}
        if not isinstance(tags, dict):
            raise ValueError(f"MLflowReceiver: kw_args[{key!r}] must be a dict of tags, got {type(tags).__name__}")
        return dict(tags)

    def get_run_name(self, site_name: str) -> str:
        """Return ``<site>-<job id[:6]>-<job name>-<run_name>`` (the job name only when the site knows it)."""
        run_name = self.kw_args.get(TrackConst.RUN_NAME, DEFAULT_RUN_NAME)
        parts = [site_name, self._job_id[:6]] + ([self._job_name] if self._job_name else []) + [str(run_name)]
        return "-".join(parts)

    def _run_for(self, site: str) -> tuple[Any, str]:
        """The MLflow client and run id of ``site``, created on first use."""
        client = self.mlflow_clients.get(site)
        if client is None:
            client = self._client_class(tracking_uri=self._uri)
            run_name = self.get_run_name(site)
            tags = self._get_tags(TrackConst.RUN_TAGS)
            tags.update({TrackConst.JOB_ID_KEY: self._job_id, TrackConst.RUN_NAME: run_name, TrackConst.SITE_KEY: site})
            run = client.create_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
            self.mlflow_clients[site] = client
            self.run_ids[site] = run.info.run_id
            self.buffer[site] = {"metrics": [], "params": [], "tags": []}
            self._params[site] = {}
            self._last_flush[site] = time.monotonic()
        return client, self.run_ids[site]

    # records --------------------------------------------------------------------------------------------
    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str) -> None:
        """Buffer one record of ``record_origin`` (texts are written at once); send the buffer when it is due."""
        data = AnalyticsData.from_dxo(from_shareable(shareable), receiver=LogWriterName.MLFLOW)
        check_record_size(data)
        client, run_id = self._run_for(record_origin)
        if data.data_type == AnalyticsDataType.TEXT:
            path = data.path
            if not isinstance(path, str) or not _safe_artifact_path(path):
                self.log_warning(
                    fl_ctx,
                    f"text {data.tag!r} from {record_origin} needs a relative artifact path, got {path!r}",
                    False,
                )
                return
            client.log_text(run_id=run_id, text=data.value, artifact_file=path)
            return
        if not self._buffer(data, record_origin, fl_ctx):
            self.log_warning(
                fl_ctx, f"records of type {data.data_type.value} are not written to MLflow; dropped", False
            )
            return
        buf = self.buffer[record_origin]
        size = len(buf["metrics"]) + len(buf["params"]) + len(buf["tags"])
        if time.monotonic() - self._last_flush[record_origin] >= self.buffer_flush_time or size >= _MAX_ENTITIES:
            self.flush_buffer(record_origin)

    def _buffer(self, data: AnalyticsData, site: str, fl_ctx: FLContext | None = None) -> bool:
        """Add the record's entries to ``site``'s buffer (False: MLflow has no place for its type)."""
        entities = self._entities
        now_ms = int(time.time() * 1000)
        step = data.step or 0
        kind = data.data_type
        plural = kind in (AnalyticsDataType.METRICS, AnalyticsDataType.PARAMETERS, AnalyticsDataType.TAGS)
        pairs = list(data.value.items()) if plural else [(data.tag, data.value)]
        if kind in (AnalyticsDataType.METRIC, AnalyticsDataType.METRICS):
            group, made = "metrics", [entities.Metric(str(k), float(v), now_ms, step) for k, v in pairs]
        elif kind in (AnalyticsDataType.PARAMETER, AnalyticsDataType.PARAMETERS):
            group, made = "params", self._new_params(site, [entities.Param(str(k), str(v)) for k, v in pairs], fl_ctx)
        elif kind in (AnalyticsDataType.TAG, AnalyticsDataType.TAGS):
            group, made = "tags", [entities.RunTag(str(k), str(v)) for k, v in pairs]
        else:
            return False
        self.buffer[site][group].extend(self._valid(group, made, site, fl_ctx))
        return True

    def _new_params(self, site: str, params: list, fl_ctx: FLContext | None) -> list:
        """The parameters not logged before; one logged before with another value is dropped (MLflow keeps the
        first value of a parameter and refuses a batch that changes it)."""
        logged = self._params.setdefault(site, {})
        out = []
        for p in params:
            before = logged.get(p.key)
            if before is None:
                if len(logged) >= MAX_PARAMS_PER_SITE:
                    self._dropped(site, "params", f"parameter {p.key!r}: {site} has {len(logged)}, the most", fl_ctx)
                    continue
                logged[p.key] = p.value
                out.append(p)
            elif before != p.value:
                self._dropped(
                    site,
                    "changed",
                    f"parameter {p.key!r}={p.value!r}: MLflow parameters cannot change "
                    f"(it is {before!r}); log it as a metric or under another name",
                    fl_ctx,
                )
        return out

    def _valid(self, group: str, entries: list, site: str, fl_ctx: FLContext | None) -> list:
        """``entries`` without those MLflow's own validation refuses (names, lengths, values)."""
        if self._validate is None:
            return entries
        out = []
        for entry in entries:
            try:
                self._validate(**{"metrics": [], "params": [], "tags": [], group: [entry]})
            except Exception as exc:
                self._dropped(site, "refused", f"{group[:-1]} {str(entry.key)[:80]!r} refused by MLflow: {exc}", fl_ctx)
            else:
                out.append(entry)
        return out

    def _dropped(self, site: str, kind: str, text: str, fl_ctx: FLContext | None) -> None:
        """Log a dropped entry of ``site`` once per kind every 10 s (a peer can send them again and again)."""
        allowed = self._drop_log.check(f"{site}\0{kind}")
        if allowed is not None:
            more = f" ({allowed[0]} more since the last line)" if allowed[0] else ""
            self.log_warning(fl_ctx, f"dropped an MLflow entry from {site}: {text[:500]}{more}", False)

    def flush_buffer(self, record_origin: str) -> None:
        """Send the buffered records of ``record_origin`` to MLflow (in batches within MLflow's limits)."""
        buf = self.buffer.get(record_origin)
        if buf is None:
            return
        client, run_id = self._run_for(record_origin)
        metrics, tags = buf["metrics"], buf["tags"]
        params = list({p.key: p for p in buf["params"]}.values())  # one value per key in a batch
        buf["metrics"], buf["params"], buf["tags"] = [], [], []
        self._last_flush[record_origin] = time.monotonic()
        while metrics or params or tags:
            batch_params, params = params[:_MAX_PARAMS], params[_MAX_PARAMS:]
            batch_tags, tags = tags[:_MAX_TAGS], tags[_MAX_TAGS:]
            room = _MAX_ENTITIES - len(batch_params) - len(batch_tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self._log_batch(client, run_id, record_origin, batch_metrics, batch_params, batch_tags)

    def _log_batch(self, client: Any, run_id: str, site: str, metrics: list, params: list, tags: list) -> None:
        """Send one batch; when MLflow refuses its content, send its halves, down to the single entries it refuses.

        Raises:
            Exception: MLflow failed for another reason (e.g. its store cannot be reached): the batch is lost.
        """
        try:
            client.log_batch(run_id=run_id, metrics=metrics, params=params, tags=tags)
            return
        except Exception as exc:
            if getattr(exc, "error_code", None) != _REFUSED:
                raise
            entries = [("metrics", e) for e in metrics] + [("params", e) for e in params] + [("tags", e) for e in tags]
            if len(entries) == 1:
                group, entry = entries[0]
                self._dropped(site, "refused", f"{group[:-1]} {str(entry.key)[:80]!r} refused by MLflow: {exc}", None)
                return
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            self._log_batch(client, run_id, site, *[[e for g, e in part if g == name] for name in _GROUPS])

    def finalize(self, fl_ctx: FLContext) -> None:
        """Send what is buffered and end every site's run."""
        for site in list(self.buffer):
            try:
                self.flush_buffer(site)
            except Exception as exc:
                self.log_error(fl_ctx, f"sending the last MLflow records of {site} failed: {exc}", False)
        for site, run_id in self.run_ids.items():
            try:
                self.mlflow_clients[site].set_terminated(run_id)
            except Exception as exc:
                self.log_error(fl_ctx, f"ending the MLflow run of {site} failed: {exc}", False)

    def get_run_id(self, site_id: str) -> str | None:
        """Return the MLflow run id of ``site_id``, or None."""
        return self.run_ids.get(site_id)

    def get_mlflow_client(self, site_id: str) -> Any:
        """Return the MlflowClient of ``site_id``, or None."""
        return self.mlflow_clients.get(site_id)


def _file_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).as_uri()
