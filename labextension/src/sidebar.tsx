/**
 * The "Fine-tuning runs" sidebar: every run of the server's MLflow store with its status, a loss
 * sparkline and progress, polled every ~2 s while a run is live and slower otherwise, and only
 * while the sidebar is visible. Run state comes from MLflow, so runs started anywhere show up.
 */

import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { cancelRun, fetchRuns } from './api';
import { runsIcon } from './icon';
import {
  formatStart,
  isLive,
  type IRunsPayload,
  type IRunSummary,
  mlflowRunUrl,
  progressFraction,
  progressText,
  statsText,
  refreshInterval,
  sparklinePath
} from './model';

const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 24;

/** Fetches runs and schedules the next fetch; `changed` fires after every fetch. */
export class RunsPoller {
  readonly changed = new Signal<this, void>(this);
  payload: IRunsPayload = { runs: [], mlflowUiUrl: null, trackingUri: '' };
  error: string | null = null;
  loaded = false;
  private _timer: number | null = null;
  private _active = false;
  private _disposed = false;

  /** Start (or stop) polling; starting fetches at once. */
  setActive(active: boolean): void {
    this._active = active;
    if (active) {
      void this.refresh();
    } else {
      this._clearTimer();
    }
  }

  async refresh(): Promise<void> {
    this._clearTimer();
    try {
      this.payload = await fetchRuns();
      this.error = null;
    } catch (reason) {
      this.error = reason instanceof Error ? reason.message : String(reason);
    }
    this.loaded = true;
    if (this._disposed) {
      return;
    }
    this.changed.emit();
    if (this._active) {
      this._clearTimer();
      const delay = refreshInterval(this.payload.runs);
      this._timer = window.setTimeout(() => void this.refresh(), delay);
    }
  }

  /** Fetch now when polling (e.g. a `%%finetune` cell just ran, so a new run may exist). */
  poke(): void {
    if (this._active) {
      void this.refresh();
    }
  }

  async cancel(run: IRunSummary): Promise<void> {
    try {
      await cancelRun(run.id);
    } catch (reason) {
      this.error = reason instanceof Error ? reason.message : String(reason);
    }
    await this.refresh();
  }

  dispose(): void {
    this._disposed = true;
    this._clearTimer();
    Signal.clearData(this);
  }

  private _clearTimer(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }
}

function Sparkline(props: { run: IRunSummary }): JSX.Element {
  const path = sparklinePath(props.run.loss, SPARK_WIDTH, SPARK_HEIGHT);
  const last = props.run.loss[props.run.loss.length - 1];
  const title = last ? `train/loss ${last[1].toFixed(4)} at step ${last[0]}` : 'no loss yet';
  return (
    <svg
      className="jp-ftmagic-sparkline"
      width={SPARK_WIDTH}
      height={SPARK_HEIGHT}
      viewBox={`0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`}
      role="img"
      aria-label={title}
    >
      <title>{title}</title>
      {path ? <path d={path} /> : null}
    </svg>
  );
}

interface IRunItemProps {
  run: IRunSummary;
  mlflowUiUrl: string | null;
  onCancel: (run: IRunSummary) => void;
  onReattach: (run: IRunSummary) => void;
  onOpen: (run: IRunSummary) => void;
}

function RunItem(props: IRunItemProps): JSX.Element {
  const { run } = props;
  const fraction = progressFraction(run);
  const url = mlflowRunUrl(props.mlflowUiUrl, run);
  const live = isLive(run.status);
  return (
    <li className="jp-ftmagic-run" data-run-id={run.id} data-status={run.status}>
      <button
        className="jp-ftmagic-run-name"
        title={`${run.name} (${run.id}): open its curves, events, checkpoints and generations`}
        onClick={() => props.onOpen(run)}
      >
        {run.name}
      </button>
      <div className="jp-ftmagic-run-meta">
        <span className="jp-ftmagic-run-model">{run.model}</span>
        <span className="jp-ftmagic-run-start">{formatStart(run.created)}</span>
        <span className={`jp-ftmagic-status jp-ftmagic-status-${run.status}`}>{run.status}</span>
      </div>
      <div className="jp-ftmagic-run-curve">
        <Sparkline run={run} />
        <span className="jp-ftmagic-run-progress" title="step / total steps">
          {progressText(run)}
        </span>
      </div>
      <div className="jp-ftmagic-run-stats">{statsText(run)}</div>
      {run.error ? <div className="jp-ftmagic-run-error">{run.error}</div> : null}
      {fraction !== null ? (
        <div className="jp-ftmagic-progressbar">
          <div style={{ width: `${Math.round(fraction * 100)}%` }} />
        </div>
      ) : null}
      <div className="jp-ftmagic-run-actions">
        {live ? (
          <button
            className="jp-Button jp-mod-styled jp-mod-small jp-mod-warn jp-ftmagic-cancel"
            onClick={() => props.onCancel(run)}
          >
            Cancel
          </button>
        ) : null}
        {url ? (
          <a className="jp-ftmagic-mlflow" href={url} target="_blank" rel="noopener noreferrer">
            Open in MLflow
          </a>
        ) : null}
        <button
          className="jp-Button jp-mod-styled jp-mod-small jp-ftmagic-reattach"
          title={`Insert a cell with %ft status ${run.id} into the active notebook`}
          onClick={() => props.onReattach(run)}
        >
          Insert reattach cell
        </button>
      </div>
    </li>
  );
}

function RunsView(props: {
  poller: RunsPoller;
  onReattach: (run: IRunSummary) => void;
  onOpen: (run: IRunSummary) => void;
}): JSX.Element {
  const { poller } = props;
  const { runs, mlflowUiUrl, trackingUri } = poller.payload;
  return (
    <div className="jp-ftmagic-runs-body">
      <div className="jp-ftmagic-runs-header">
        <h2>Fine-tuning runs</h2>
        <button
          className="jp-Button jp-mod-minimal jp-ftmagic-refresh"
          title="Refresh"
          onClick={() => void poller.refresh()}
        >
          ⟳
        </button>
      </div>
      {trackingUri ? (
        <div className="jp-ftmagic-store" title={trackingUri}>
          {trackingUri}
        </div>
      ) : null}
      {poller.error ? <div className="jp-ftmagic-error">{poller.error}</div> : null}
      {!poller.loaded && !poller.error ? (
        <div className="jp-ftmagic-loading">Loading runs…</div>
      ) : null}
      {poller.loaded && runs.length === 0 && !poller.error ? (
        <div className="jp-ftmagic-empty">No runs yet: run a %%finetune cell.</div>
      ) : null}
      <ul className="jp-ftmagic-run-list">
        {runs.map(run => (
          <RunItem
            key={run.id}
            run={run}
            mlflowUiUrl={mlflowUiUrl}
            onCancel={r => void poller.cancel(r)}
            onReattach={props.onReattach}
            onOpen={props.onOpen}
          />
        ))}
      </ul>
    </div>
  );
}

/** The sidebar widget; polls only while it is visible. */
export class RunsSidebar extends ReactWidget {
  readonly poller = new RunsPoller();

  constructor(
    private _onReattach: (run: IRunSummary) => void,
    private _onOpen: (run: IRunSummary) => void
  ) {
    super();
    this.id = 'ftmagic-runs';
    this.addClass('jp-ftmagic-runs');
    this.title.icon = runsIcon;
    this.title.caption = 'Fine-tuning runs';
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this.poller.changed}>
        {() => (
          <RunsView poller={this.poller} onReattach={this._onReattach} onOpen={this._onOpen} />
        )}
      </UseSignal>
    );
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.poller.setActive(true);
    }
  }

  protected onBeforeDetach(msg: Message): void {
    this.poller.setActive(false);
    super.onBeforeDetach(msg);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.poller.setActive(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.poller.setActive(false);
  }

  dispose(): void {
    this.poller.dispose();
    super.dispose();
  }
}
