/**
 * When a cell is a `%%finetune` cell, and where its YAML body is.
 *
 * Pure functions (no JupyterLab or CodeMirror imports) so the switch that turns YAML
 * highlighting on and off is unit-tested without an editor. The rule follows IPython: leading
 * blank lines are dropped, then the first line must be the cell magic `%%finetune` followed by
 * nothing, spaces or flags.
 */

export const FINETUNE_MAGIC = '%%finetune';

const MAGIC_LINE = /^%%finetune(?:[ \t].*)?$/;

/** A half-open `[from, to)` range of character offsets. */
export interface IRange {
  from: number;
  to: number;
}

/** Whether one line (without its line break) is the `%%finetune` magic line. */
export function isMagicLine(line: string): boolean {
  return MAGIC_LINE.test(line.replace(/\r$/, ''));
}

/** Whether a line holds only spaces and tabs (IPython drops such lines before the magic). */
export function isBlankLine(line: string): boolean {
  return /^[ \t\r]*$/.test(line);
}

/**
 * The range of the magic line itself (without its line break), or null when the text is not a
 * `%%finetune` cell.
 */
export function magicLineRange(text: string): IRange | null {
  let start = 0;
  for (;;) {
    const newline = text.indexOf('\n', start);
    const end = newline === -1 ? text.length : newline;
    const line = text.slice(start, end);
    if (!isBlankLine(line)) {
      return isMagicLine(line) ? { from: start, to: end } : null;
    }
    if (newline === -1) {
      return null;
    }
    start = newline + 1;
  }
}

/** Whether the cell source is a `%%finetune` cell (so its body should be YAML). */
export function isFinetuneCell(text: string): boolean {
  return magicLineRange(text) !== null;
}

/**
 * The YAML body of a `%%finetune` cell: from the line after the magic to the end of the text.
 * Null when the text is not a `%%finetune` cell. An empty body gives an empty range.
 */
export function bodyRange(text: string): IRange | null {
  const magic = magicLineRange(text);
  if (magic === null) {
    return null;
  }
  const from = Math.min(magic.to + 1, text.length);
  return { from, to: text.length };
}
