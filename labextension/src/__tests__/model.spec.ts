import {
  FAST_REFRESH_MS,
  formatStart,
  mlflowRunUrl,
  parsePayload,
  parseRun,
  parseSeries,
  progressFraction,
  progressText,
  reattachCode,
  refreshInterval,
  SLOW_REFRESH_MS,
  sparklinePath,
  statsText
} from '../model';

const ID_A = 'a'.repeat(32);
const ID_B = '0123456789abcdef0123456789abcdef';

function rawRun(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: ID_A,
    name: 'tiny-chat-ner-1128-1012',
    model: 'ftmagic/tiny-chat',
    status: 'RUNNING',
    progress: { step: 3, total_steps: 8, tokens: 1200, elapsed_s: 4.5, eta_s: 7.5 },
    created: 1764324000,
    loss: [
      [2, 3.5],
      [1, 4.0],
      [3, 3.1]
    ],
    ...overrides
  };
}

describe('parseRun', () => {
  it('reads every field the sidebar shows', () => {
    const run = parseRun(rawRun())!;
    expect(run).toEqual({
      id: ID_A,
      name: 'tiny-chat-ner-1128-1012',
      model: 'ftmagic/tiny-chat',
      status: 'RUNNING',
      step: 3,
      totalSteps: 8,
      etaSeconds: 7.5,
      elapsedSeconds: 4.5,
      created: 1764324000 * 1000,
      loss: [
        [1, 4.0],
        [2, 3.5],
        [3, 3.1]
      ],
      error: null
    });
  });

  it("keeps the server's note on a run with unreadable tags", () => {
    const note = "tag ftmagic.total_steps is not a number: 'lots'";
    expect(parseRun(rawRun({ error: note }))!.error).toBe(note);
  });

  it('accepts ISO start times and a missing progress', () => {
    const run = parseRun(rawRun({ created: '2026-11-28T10:00:00+00:00', progress: null }))!;
    expect(run.created).toBe(Date.UTC(2026, 10, 28, 10, 0, 0));
    expect(run.step).toBe(0);
    expect(run.totalSteps).toBeNull();
  });

  it.each([
    [{ id: '../../etc/passwd' }],
    [{ id: 'A'.repeat(32) }],
    [{ id: 42 }],
    [{ id: undefined }]
  ])('drops a run with a bad id %j', overrides => {
    expect(parseRun(rawRun(overrides))).toBeNull();
  });

  it('drops non-objects', () => {
    expect(parseRun(null)).toBeNull();
    expect(parseRun([ID_A])).toBeNull();
  });
});

describe('parseSeries', () => {
  it('keeps finite [step, value] pairs in step order', () => {
    expect(parseSeries([[3, 1], [1, 2], ['x', 1], [2, null], [4], 'bad', [5, 0.5]])).toEqual([
      [1, 2],
      [3, 1],
      [5, 0.5]
    ]);
    expect(parseSeries(undefined)).toEqual([]);
  });
});

describe('parsePayload', () => {
  it('sorts newest first and drops malformed runs', () => {
    const payload = parsePayload({
      runs: [
        rawRun({ id: ID_A, created: 100 }),
        { id: 'nope' },
        rawRun({ id: ID_B, created: 200 }),
        rawRun({ id: 'c'.repeat(32), created: null })
      ],
      mlflow_ui_url: 'http://127.0.0.1:5000/',
      tracking_uri: 'sqlite:///x/mlflow.db'
    });
    expect(payload.runs.map(r => r.id)).toEqual([ID_B, ID_A, 'c'.repeat(32)]);
    expect(payload.mlflowUiUrl).toBe('http://127.0.0.1:5000');
    expect(payload.trackingUri).toBe('sqlite:///x/mlflow.db');
  });

  it('survives an empty or broken answer', () => {
    expect(parsePayload(null)).toEqual({ runs: [], mlflowUiUrl: null, trackingUri: '' });
    expect(parsePayload({ runs: 'x', mlflow_ui_url: '  ' }).mlflowUiUrl).toBeNull();
  });
});

describe('refreshInterval', () => {
  const run = (status: string) => parseRun(rawRun({ status }))!;
  it('polls fast while a run is pending or running', () => {
    expect(refreshInterval([run('COMPLETED'), run('RUNNING')])).toBe(FAST_REFRESH_MS);
    expect(refreshInterval([run('PENDING')])).toBe(FAST_REFRESH_MS);
  });
  it('polls slowly when every run has ended', () => {
    expect(refreshInterval([run('COMPLETED'), run('STOPPED'), run('FAILED')])).toBe(
      SLOW_REFRESH_MS
    );
    expect(refreshInterval([])).toBe(SLOW_REFRESH_MS);
  });
});

describe('progress', () => {
  it('shows step/total and a clamped fraction', () => {
    const run = parseRun(rawRun())!;
    expect(progressText(run)).toBe('3/8');
    expect(progressFraction(run)).toBeCloseTo(0.375);
    expect(progressFraction({ ...run, step: 12 })).toBe(1);
  });
  it('shows the step alone before the total is known', () => {
    const run = parseRun(rawRun({ progress: { step: 5 } }))!;
    expect(progressText(run)).toBe('5');
    expect(progressFraction(run)).toBeNull();
  });
});

describe('sparklinePath', () => {
  it('maps the first point left, the last right, the highest value to the top', () => {
    expect(
      sparklinePath(
        [
          [0, 4],
          [5, 2],
          [10, 0]
        ],
        102,
        22
      )
    ).toBe('M 1 1 L 51 11 L 101 21');
  });
  it('draws a flat series and a single point as a level line', () => {
    expect(
      sparklinePath(
        [
          [1, 2],
          [2, 2]
        ],
        50,
        20
      )
    ).toBe('M 1 10 L 49 10');
    expect(sparklinePath([[7, 3]], 50, 20)).toBe('M 1 10 L 49 10');
  });
  it('is empty without points', () => {
    expect(sparklinePath([], 50, 20)).toBe('');
  });
});

describe('formatStart', () => {
  it('shows the clock time today and the date otherwise', () => {
    const now = new Date(2026, 10, 28, 12, 0);
    expect(formatStart(new Date(2026, 10, 28, 9, 5).getTime(), now)).toBe('09:05');
    expect(formatStart(new Date(2026, 10, 27, 23, 59).getTime(), now)).toBe('2026-11-27 23:59');
    expect(formatStart(NaN, now)).toBe('');
  });
});

describe('links and cells', () => {
  const run = parseRun(rawRun())!;
  it('builds the MLflow run URL only when a UI is known', () => {
    expect(mlflowRunUrl('http://h:5000', run)).toBe(`http://h:5000/#/runs/${ID_A}`);
    expect(mlflowRunUrl(null, run)).toBeNull();
  });
  it('reattaches with %ft status', () => {
    expect(reattachCode(run)).toBe(`%ft status ${ID_A}`);
  });
});

describe('statsText', () => {
  it('shows the latest loss, the elapsed time and, while live, the ETA', () => {
    const run = parseRun(rawRun({ progress: { step: 3, elapsed_s: 65, eta_s: 3725 } }))!;
    expect(statsText(run)).toBe('loss 3.1000 · 1:05 elapsed · ETA 1:02:05');
    const done = parseRun(rawRun({ status: 'COMPLETED', progress: { elapsed_s: 65 } }))!;
    expect(statsText(done)).toBe('loss 3.1000 · 1:05 elapsed');
    expect(statsText(parseRun(rawRun({ loss: [], progress: null }))!)).toBe('');
  });
});
