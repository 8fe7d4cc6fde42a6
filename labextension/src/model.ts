/**
 * The runs sidebar's data model: parse the server's REST payload, order the runs, choose how
 * often to poll, and draw the loss sparkline. Pure functions, unit-tested with jest.
 */

/** Run statuses that can still change (the sidebar polls fast while any run has one). */
export const LIVE_STATUSES = ['PENDING', 'RUNNING'];

export const FAST_REFRESH_MS = 2000;
export const SLOW_REFRESH_MS = 15000;

/** One run as the sidebar shows it. */
export interface IRunSummary {
  id: string;
  name: string;
  model: string;
  status: string;
  step: number;
  totalSteps: number | null;
  etaSeconds: number | null;
  elapsedSeconds: number | null;
  /** Start time in milliseconds since the epoch (NaN when unknown). */
  created: number;
  /** `[step, loss]` points in step order. */
  loss: Array<[number, number]>;
  /** What about the run could not be read (a bad tag), else null. */
  error: string | null;
}

/** The `GET /ftmagic/api/runs` answer, parsed. */
export interface IRunsPayload {
  runs: IRunSummary[];
  mlflowUiUrl: string | null;
  trackingUri: string;
}

const RUN_ID = /^[0-9a-f]{32}$/;

function asRecord(value: unknown): Record<string, unknown> | null {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : null;
}

function asNumber(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function asString(value: unknown, fallback = ''): string {
  return typeof value === 'string' ? value : fallback;
}

function parseTime(value: unknown): number {
  if (typeof value === 'number') {
    return value * 1000; // the server sends epoch seconds
  }
  return typeof value === 'string' ? Date.parse(value) : NaN;
}

/** `[[step, value], ...]` with only finite numbers, sorted by step. */
export function parseSeries(value: unknown): Array<[number, number]> {
  if (!Array.isArray(value)) {
    return [];
  }
  const points: Array<[number, number]> = [];
  for (const item of value) {
    if (Array.isArray(item) && item.length === 2) {
      const step = asNumber(item[0]);
      const y = asNumber(item[1]);
      if (step !== null && y !== null) {
        points.push([step, y]);
      }
    }
  }
  return points.sort((a, b) => a[0] - b[0]);
}

/** One run from the payload, or null when it lacks a valid id. */
export function parseRun(value: unknown): IRunSummary | null {
  const data = asRecord(value);
  if (data === null || typeof data.id !== 'string' || !RUN_ID.test(data.id)) {
    return null;
  }
  const progress = asRecord(data.progress) ?? {};
  const total = asNumber(progress.total_steps);
  return {
    id: data.id,
    name: asString(data.name, data.id.slice(0, 8)),
    model: asString(data.model),
    status: asString(data.status, 'UNKNOWN').toUpperCase(),
    step: asNumber(progress.step) ?? 0,
    totalSteps: total !== null && total > 0 ? total : null,
    etaSeconds: asNumber(progress.eta_s),
    elapsedSeconds: asNumber(progress.elapsed_s),
    created: parseTime(data.created),
    loss: parseSeries(data.loss),
    error: asString(data.error) || null
  };
}

/** Newest first; runs without a start time last; ties by id so the order is stable. */
export function sortRuns(runs: IRunSummary[]): IRunSummary[] {
  const key = (run: IRunSummary) => (Number.isNaN(run.created) ? -Infinity : run.created);
  return [...runs].sort((a, b) => key(b) - key(a) || a.id.localeCompare(b.id));
}

/** Parse the whole `GET runs` answer; malformed runs are dropped, never thrown on. */
export function parsePayload(value: unknown): IRunsPayload {
  const data = asRecord(value) ?? {};
  const runs = Array.isArray(data.runs) ? data.runs : [];
  const parsed = runs.map(parseRun).filter((run): run is IRunSummary => run !== null);
  const url = asString(data.mlflow_ui_url).trim();
  return {
    runs: sortRuns(parsed),
    mlflowUiUrl: url ? url.replace(/\/+$/, '') : null,
    trackingUri: asString(data.tracking_uri)
  };
}

export function isLive(status: string): boolean {
  return LIVE_STATUSES.includes(status);
}

/** Poll every ~2 s while any run can still change, slower otherwise. */
export function refreshInterval(runs: IRunSummary[]): number {
  return runs.some(run => isLive(run.status)) ? FAST_REFRESH_MS : SLOW_REFRESH_MS;
}

/** `"12/40"`, or `"12"` when the total is not known yet. */
export function progressText(run: IRunSummary): string {
  return run.totalSteps === null ? `${run.step}` : `${run.step}/${run.totalSteps}`;
}

/** `75` -> `"1:15"`, `3725` -> `"1:02:05"`. */
export function clock(seconds: number): string {
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = String(total % 60).padStart(2, '0');
  return hours ? `${hours}:${String(minutes).padStart(2, '0')}:${secs}` : `${minutes}:${secs}`;
}

/** `"loss 2.3457 · 1:05 elapsed · ETA 0:40"`: what is known of the latest loss and the times. */
export function statsText(run: IRunSummary): string {
  const parts: string[] = [];
  const last = run.loss[run.loss.length - 1];
  if (last) {
    parts.push(`loss ${last[1].toFixed(4)}`);
  }
  if (run.elapsedSeconds !== null) {
    parts.push(`${clock(run.elapsedSeconds)} elapsed`);
  }
  if (isLive(run.status) && run.etaSeconds !== null) {
    parts.push(`ETA ${clock(run.etaSeconds)}`);
  }
  return parts.join(' · ');
}

/** Progress in [0, 1], or null when the total is not known. */
export function progressFraction(run: IRunSummary): number | null {
  if (run.totalSteps === null) {
    return null;
  }
  return Math.max(0, Math.min(1, run.step / run.totalSteps));
}

/**
 * An SVG path (`M x y L x y ...`) drawing the series in a `width` x `height` box, with higher
 * values nearer the top. Empty for no points; a single point or a flat series is a level line.
 */
export function sparklinePath(
  points: Array<[number, number]>,
  width: number,
  height: number,
  pad = 1
): string {
  if (points.length === 0) {
    return '';
  }
  const xs = points.map(p => p[0]);
  const ys = points.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x: number) => (x1 === x0 ? width / 2 : pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad));
  const sy = (y: number) =>
    y1 === y0 ? height / 2 : pad + ((y1 - y) / (y1 - y0)) * (height - 2 * pad);
  const round = (v: number) => Math.round(v * 10) / 10;
  const coords = points.map(([x, y]) => `${round(sx(x))} ${round(sy(y))}`);
  if (coords.length === 1) {
    return `M ${pad} ${round(height / 2)} L ${round(width - pad)} ${round(height / 2)}`;
  }
  return `M ${coords[0]} ` + coords.slice(1).map(c => `L ${c}`).join(' ');
}

/** A short start time: the clock time today, else the date and time. */
export function formatStart(created: number, now: Date = new Date()): string {
  if (Number.isNaN(created)) {
    return '';
  }
  const when = new Date(created);
  const pad = (n: number) => String(n).padStart(2, '0');
  const time = `${pad(when.getHours())}:${pad(when.getMinutes())}`;
  if (when.toDateString() === now.toDateString()) {
    return time;
  }
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} ${time}`;
}

/** The run's page in the MLflow UI (which finds the experiment itself), or null without a UI. */
export function mlflowRunUrl(base: string | null, run: IRunSummary): string | null {
  return base ? `${base}/#/runs/${run.id}` : null;
}

/** The code of the cell that reattaches a notebook to a run. */
export function reattachCode(run: IRunSummary): string {
  return `%ft status ${run.id}`;
}
