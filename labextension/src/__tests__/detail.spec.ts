import { chartLayout, parseDetail, shortNumber } from '../detail';

const ID = 'c'.repeat(32);

function rawDetail(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: ID,
    name: 'tiny-chat-ner-1130-1502',
    model: 'ftmagic/tiny-chat',
    status: 'COMPLETED',
    status_reason: 'finished 8 steps',
    progress: { step: 8, total_steps: 8, elapsed_s: 12.5, eta_s: 0 },
    created: 1764514920,
    loss: [[8, 2.1]],
    events: [
      { type: 'CREATED', time: '2026-11-30T15:02:00+00:00', message: 'created', step: null },
      { type: 'CHECKPOINT', time: '2026-11-30T15:02:09+00:00', message: 'step 4', step: 4 }
    ],
    curves: {
      'train/loss': [
        [2, 3.0],
        [1, 4.0]
      ],
      'eval/loss': [[4, 3.2]],
      'train/lr': []
    },
    metric_name: 'f1',
    checkpoints: [
      {
        step: 4,
        eval_loss: 3.2,
        metric: 0.5,
        best: true,
        models: ['models:/ner/1'],
        generations: [{ prompt: 'Which drugs?', response: '["aspirin"]' }]
      },
      { step: 'x' }
    ],
    ...overrides
  };
}

describe('parseDetail', () => {
  it('reads the summary, events, curves and checkpoints', () => {
    const detail = parseDetail(rawDetail())!;
    expect(detail.name).toBe('tiny-chat-ner-1130-1502');
    expect(detail.statusReason).toBe('finished 8 steps');
    expect(detail.events.map(e => [e.type, e.step])).toEqual([
      ['CREATED', null],
      ['CHECKPOINT', 4]
    ]);
    expect(detail.events[1].time).toBe(Date.parse('2026-11-30T15:02:09Z'));
    expect(detail.curves['train/loss']).toEqual([
      [1, 4.0],
      [2, 3.0]
    ]);
    expect(detail.curves['train/lr']).toEqual([]);
    expect(detail.metricName).toBe('f1');
    expect(detail.checkpoints).toEqual([
      {
        step: 4,
        evalLoss: 3.2,
        metric: 0.5,
        best: true,
        models: ['models:/ner/1'],
        generations: [{ prompt: 'Which drugs?', response: '["aspirin"]' }]
      }
    ]);
  });

  it('is null for an answer that is not a run, and tolerates missing parts', () => {
    expect(parseDetail({ id: 'nope' })).toBeNull();
    expect(parseDetail(null)).toBeNull();
    const bare = parseDetail({ id: ID, status: 'RUNNING' })!;
    expect(bare.events).toEqual([]);
    expect(bare.curves).toEqual({});
    expect(bare.checkpoints).toEqual([]);
    expect(bare.metricName).toBeNull();
  });
});

describe('chartLayout', () => {
  it('draws curves on shared axes with a margin around the values', () => {
    const layout = chartLayout(
      [
        [
          [1, 4],
          [3, 2]
        ],
        [[3, 3]]
      ],
      100,
      50
    )!;
    expect(layout.xRange).toEqual([1, 3]);
    expect(layout.values).toEqual([2, 4]);
    expect(layout.yRange[0]).toBeCloseTo(1.8);
    expect(layout.yRange[1]).toBeCloseTo(4.2);
    // 4 is near the top, 2 near the bottom; the second curve shares the x scale.
    expect(layout.paths[0]).toBe('M 0 4.2 L 100 45.8');
    expect(layout.paths[1]).toBe('M 100 25');
  });

  it('does not blow a tiny change up to the whole height', () => {
    const layout = chartLayout(
      [
        [
          [1, 7.643],
          [2, 7.639]
        ]
      ],
      100,
      100
    )!;
    const ys = layout.paths[0].split(' ').filter((_, i) => i % 3 === 2).map(Number);
    expect(Math.abs(ys[1] - ys[0])).toBeLessThan(10);
  });

  it('is null without points', () => {
    expect(chartLayout([[], []], 100, 50)).toBeNull();
  });
});

describe('shortNumber', () => {
  it('keeps four significant digits and uses exponents for tiny rates', () => {
    expect(shortNumber(2.345678)).toBe('2.346');
    expect(shortNumber(0.00002)).toBe('2.00e-5');
    expect(shortNumber(1234)).toBe('1234');
    expect(shortNumber(0)).toBe('0');
    expect(shortNumber(null)).toBe('–');
  });
});
