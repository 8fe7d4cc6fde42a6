import { bodyRange, isFinetuneCell, isMagicLine, magicLineRange } from '../finetuneCell';

describe('isFinetuneCell', () => {
  it.each([
    ['%%finetune\nmodel: x', true],
    ['%%finetune --dry-run\nmodel: x', true],
    ['%%finetune\tx', true],
    ['%%finetune', true],
    ['\n  \n%%finetune\nmodel: x', true],
    ['%%finetune\r\nmodel: x', true],
    ['%%finetunes\nmodel: x', false],
    ['%%finetun\nmodel: x', false],
    [' %%finetune\nmodel: x', false],
    ['# %%finetune\nmodel: x', false],
    ['x = 1\n%%finetune\n', false],
    ['%ft status abc', false],
    ['', false],
    ['\n\n', false]
  ])('%j -> %s', (text, expected) => {
    expect(isFinetuneCell(text)).toBe(expected);
  });

  it('typing the magic line switches the cell on, one key at a time', () => {
    const typed = '%%finetune';
    const states = [...typed].map((_, i) => isFinetuneCell(typed.slice(0, i + 1) + '\nmodel: x'));
    expect(states.filter(Boolean)).toHaveLength(1);
    expect(states[states.length - 1]).toBe(true);
  });
});

describe('isMagicLine', () => {
  it('ignores a trailing carriage return', () => {
    expect(isMagicLine('%%finetune --dry-run\r')).toBe(true);
  });
});

describe('magicLineRange and bodyRange', () => {
  it('give the magic line and the body after it', () => {
    const text = '%%finetune --dry-run\nmodel: x\nseed: 3\n';
    expect(magicLineRange(text)).toEqual({ from: 0, to: 20 });
    const body = bodyRange(text)!;
    expect(text.slice(body.from, body.to)).toBe('model: x\nseed: 3\n');
  });

  it('skip leading blank lines', () => {
    const text = '\n \n%%finetune\nmodel: x';
    expect(magicLineRange(text)).toEqual({ from: 3, to: 13 });
    const body = bodyRange(text)!;
    expect(text.slice(body.from, body.to)).toBe('model: x');
  });

  it('give an empty body for a lone magic line', () => {
    expect(bodyRange('%%finetune')).toEqual({ from: 10, to: 10 });
    expect(bodyRange('%%finetune\n')).toEqual({ from: 11, to: 11 });
  });

  it('are null for other cells', () => {
    expect(bodyRange('print(1)\n%%finetune\n')).toBeNull();
    expect(magicLineRange('')).toBeNull();
  });
});
