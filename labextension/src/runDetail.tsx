/**
 * A run's detail view in the main area: its curves, events, and checkpoints with their eval loss,
 * metric and generations. It polls every ~2 s while the run is live and stops once it has ended.
 */

import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { Signal } from '@lumino/signaling';
import * as React from 'react';

import { fetchRun } from './api';
import {
  CHARTS,
  chartLayout,
  type ICheckpointRow,
  type IRunDetail,
  type IRunEvent,
  shortNumber
} from './detail';
import { runsIcon } from './icon';
import { FAST_REFRESH_MS, isLive, progressText, statsText } from './model';

const CHART_WIDTH = 320;
const CHART_HEIGHT = 140;

function Chart(props: { title: string; names: string[]; detail: IRunDetail }): JSX.Element {
  const names = props.names.filter(name => (props.detail.curves[name] ?? []).length > 0);
  const layout = chartLayout(
    names.map(name => props.detail.curves[name]),
    CHART_WIDTH,
    CHART_HEIGHT
  );
  return (
    <figure className="jp-ftmagic-chart" data-chart={props.title}>
      <figcaption>{props.title}</figcaption>
      {layout === null ? (
        <div className="jp-ftmagic-chart-empty">no points yet</div>
      ) : (
        <>
          <svg
            width={CHART_WIDTH}
            height={CHART_HEIGHT}
            viewBox={`0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`}
            role="img"
            aria-label={`${props.title}: ${names.join(', ')}`}
          >
            {layout.paths.map((path, i) => (
              <path key={names[i]} className={`jp-ftmagic-curve-${i}`} d={path} />
            ))}
          </svg>
          <div className="jp-ftmagic-chart-axes">
            <span>
              {shortNumber(layout.values[0])} – {shortNumber(layout.values[1])}
            </span>
            <span>
              steps {layout.xRange[0]}–{layout.xRange[1]}
            </span>
          </div>
          <div className="jp-ftmagic-chart-legend">
            {names.map((name, i) => (
              <span key={name} className={`jp-ftmagic-legend-${i}`}>
                {name}
              </span>
            ))}
          </div>
        </>
      )}
    </figure>
  );
}

function Events(props: { events: IRunEvent[] }): JSX.Element {
  return (
    <table className="jp-ftmagic-events">
      <thead>
        <tr>
          <th>time</th>
          <th>event</th>
          <th>step</th>
          <th>message</th>
        </tr>
      </thead>
      <tbody>
        {props.events.map((event, i) => (
          <tr key={i} data-event={event.type}>
            <td>{Number.isNaN(event.time) ? '' : new Date(event.time).toLocaleTimeString()}</td>
            <td>{event.type}</td>
            <td>{event.step ?? ''}</td>
            <td>{event.message}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Checkpoints(props: { rows: ICheckpointRow[]; metricName: string | null }): JSX.Element {
  if (props.rows.length === 0) {
    return <div className="jp-ftmagic-empty">No checkpoints yet.</div>;
  }
  return (
    <table className="jp-ftmagic-checkpoints">
      <thead>
        <tr>
          <th>step</th>
          <th>eval loss</th>
          {props.metricName ? <th>{props.metricName}</th> : null}
          <th>generations</th>
          <th>registered</th>
        </tr>
      </thead>
      <tbody>
        {props.rows.map(row => (
          <tr key={row.step} data-step={row.step} className={row.best ? 'jp-mod-best' : ''}>
            <td>
              {row.step}
              {row.best ? ' ★' : ''}
            </td>
            <td>{shortNumber(row.evalLoss)}</td>
            {props.metricName ? <td>{shortNumber(row.metric)}</td> : null}
            <td>
              {row.generations.map((g, i) => (
                <div key={i} className="jp-ftmagic-generation">
                  <span className="jp-ftmagic-prompt">{g.prompt}</span>
                  <span className="jp-ftmagic-response">{g.response}</span>
                </div>
              ))}
            </td>
            <td>{row.models.join(', ')}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function DetailView(props: { widget: RunDetailWidget }): JSX.Element {
  const { detail, error } = props.widget;
  if (detail === null) {
    return (
      <div className="jp-ftmagic-detail">
        {error ? <div className="jp-ftmagic-error">{error}</div> : <div>Loading run…</div>}
      </div>
    );
  }
  return (
    <div className="jp-ftmagic-detail" data-run-id={detail.id} data-status={detail.status}>
      <h2 title={detail.id}>{detail.name}</h2>
      <div className="jp-ftmagic-detail-meta">
        <span className={`jp-ftmagic-status jp-ftmagic-status-${detail.status}`}>
          {detail.status}
        </span>
        <span>{detail.model}</span>
        <span>step {progressText(detail)}</span>
        <span>{statsText(detail)}</span>
      </div>
      {detail.statusReason ? (
        <div className="jp-ftmagic-detail-reason">{detail.statusReason}</div>
      ) : null}
      {error ? <div className="jp-ftmagic-error">{error}</div> : null}
      <div className="jp-ftmagic-charts">
        {CHARTS.map(chart => (
          <Chart key={chart.title} title={chart.title} names={chart.curves} detail={detail} />
        ))}
      </div>
      <h3>Checkpoints</h3>
      <Checkpoints rows={detail.checkpoints} metricName={detail.metricName} />
      <h3>Events</h3>
      <Events events={detail.events} />
    </div>
  );
}

/** One run's detail view; fetches when shown and keeps polling while the run is live. */
export class RunDetailWidget extends ReactWidget {
  readonly changed = new Signal<this, void>(this);
  detail: IRunDetail | null = null;
  error: string | null = null;
  private _timer: number | null = null;

  constructor(readonly runId: string) {
    super();
    this.id = `ftmagic-run-${runId}`;
    this.addClass('jp-ftmagic-detail-panel');
    this.title.label = runId.slice(0, 8);
    this.title.icon = runsIcon;
    this.title.closable = true;
    void this.refresh();
  }

  async refresh(): Promise<void> {
    this._clearTimer();
    try {
      this.detail = await fetchRun(this.runId);
      this.error = null;
      this.title.label = this.detail.name;
      this.title.caption = `${this.detail.name} (${this.detail.status})`;
    } catch (reason) {
      this.error = reason instanceof Error ? reason.message : String(reason);
    }
    if (this.isDisposed) {
      return;
    }
    this.changed.emit();
    if (this.detail === null || isLive(this.detail.status)) {
      this._timer = window.setTimeout(() => void this.refresh(), FAST_REFRESH_MS);
    }
  }

  render(): JSX.Element {
    return <UseSignal signal={this.changed}>{() => <DetailView widget={this} />}</UseSignal>;
  }

  dispose(): void {
    this._clearTimer();
    Signal.clearData(this);
    super.dispose();
  }

  private _clearTimer(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }
}
