/**
 * A run's detail view, as data: parse the server's `GET runs/<id>` answer and lay out its
 * charts. Pure functions, unit-tested with jest.
 */

import { parseRun, parseSeries, type IRunSummary } from './model';

export interface IRunEvent {
  type: string;
  time: number;
  message: string;
  step: number | null;
}

export interface IGeneration {
  prompt: string;
  response: string;
}

export interface ICheckpointRow {
  step: number;
  evalLoss: number | null;
  metric: number | null;
  best: boolean;
  models: string[];
  generations: IGeneration[];
}

export interface IRunDetail extends IRunSummary {
  statusReason: string;
  events: IRunEvent[];
  /** Metric name -> `[step, value]` points in step order. */
  curves: Record<string, Array<[number, number]>>;
  metricName: string | null;
  checkpoints: ICheckpointRow[];
}

/** The charts of the detail view: a title and the curves drawn on one set of axes. */
export const CHARTS: Array<{ title: string; curves: string[] }> = [
  { title: 'Loss', curves: ['train/loss', 'eval/loss'] },
  { title: 'Learning rate', curves: ['train/lr'] },
  { title: 'Tokens per second', curves: ['train/tokens_per_s'] }
];

function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function finite(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

function parseEvent(value: unknown): IRunEvent {
  const data = record(value);
  return {
    type: text(data.type),
    time: Date.parse(text(data.time)),
    message: text(data.message),
    step: finite(data.step)
  };
}

function parseCheckpoint(value: unknown): ICheckpointRow | null {
  const data = record(value);
  const step = finite(data.step);
  if (step === null) {
    return null;
  }
  const generations = Array.isArray(data.generations) ? data.generations : [];
  return {
    step,
    evalLoss: finite(data.eval_loss),
    metric: finite(data.metric),
    best: data.best === true,
    models: Array.isArray(data.models) ? data.models.map(text).filter(Boolean) : [],
    generations: generations.map(g => ({
      prompt: text(record(g).prompt),
      response: text(record(g).response)
    }))
  };
}

/** The whole `GET runs/<id>` answer, or null when it is not a run. */
export function parseDetail(value: unknown): IRunDetail | null {
  const run = parseRun(value);
  if (run === null) {
    return null;
  }
  const data = record(value);
  const curves: Record<string, Array<[number, number]>> = {};
  for (const [name, points] of Object.entries(record(data.curves))) {
    curves[name] = parseSeries(points);
  }
  const checkpoints = (Array.isArray(data.checkpoints) ? data.checkpoints : [])
    .map(parseCheckpoint)
    .filter((row): row is ICheckpointRow => row !== null);
  return {
    ...run,
    statusReason: text(data.status_reason),
    events: (Array.isArray(data.events) ? data.events : []).map(parseEvent),
    curves,
    metricName: text(data.metric_name) || null,
    checkpoints
  };
}

export interface IChartLayout {
  /** One SVG path per curve, in the order given (empty for a curve without points). */
  paths: string[];
  xRange: [number, number];
  /** The drawn y span, the values' own with a margin. */
  yRange: [number, number];
  /** The smallest and the largest value, as the axis labels show them. */
  values: [number, number];
}

/**
 * Lay out several curves on shared axes in a `width` x `height` box (higher values nearer the
 * top). The y axis spans the values with a margin of a tenth of their spread, so a change from
 * 7.643 to 7.639 is not drawn as a fall across the whole chart: a spread under 1% of the level is
 * widened to 1% of it. Null when no curve has a point.
 */
export function chartLayout(
  curves: Array<Array<[number, number]>>,
  width: number,
  height: number
): IChartLayout | null {
  const all = ([] as Array<[number, number]>).concat(...curves);
  if (all.length === 0) {
    return null;
  }
  const xs = all.map(p => p[0]);
  const ys = all.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const values: [number, number] = [Math.min(...ys), Math.max(...ys)];
  let [y0, y1] = values;
  const least = Math.abs((y0 + y1) / 2) * 0.01 || 1e-9;
  if (y1 - y0 < least) {
    const middle = (y0 + y1) / 2;
    [y0, y1] = [middle - least / 2, middle + least / 2];
  }
  const margin = (y1 - y0) / 10;
  [y0, y1] = [y0 - margin, y1 + margin];
  const sx = (x: number) => (x1 === x0 ? width / 2 : ((x - x0) / (x1 - x0)) * width);
  const sy = (y: number) => ((y1 - y) / (y1 - y0)) * height;
  const round = (v: number) => Math.round(v * 10) / 10;
  const paths = curves.map(points =>
    points.map(([x, y], i) => `${i ? 'L' : 'M'} ${round(sx(x))} ${round(sy(y))}`).join(' ')
  );
  return { paths, xRange: [x0, x1], yRange: [y0, y1], values };
}

/** A value for an axis or a table: 4 significant digits, exponents for the very small. */
export function shortNumber(value: number | null): string {
  if (value === null) {
    return '–';
  }
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-3 || size >= 1e6)) {
    return value.toExponential(2);
  }
  return String(Number(value.toPrecision(4)));
}
