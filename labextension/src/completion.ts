/**
 * Completion of config field names and fixed values while typing in a `%%finetune` cell.
 *
 * The fields come from the server extension (`GET /ftmagic/api/fields`), which reads them from
 * `RunConfig` and the model catalog, the lists the kernel's completer uses too. The matching
 * itself is pure (`finetuneCompletions`) so it is unit-tested without an editor.
 */

import {
  autocompletion,
  type Completion,
  type CompletionContext,
  type CompletionResult
} from '@codemirror/autocomplete';
import type { Extension } from '@codemirror/state';

import { bodyRange } from './finetuneCell';

/** One config field as the server describes it. */
export interface IConfigField {
  name: string;
  help: string;
  values: string[];
}

/** What to complete: the typed fragment starts at `from`; `options` match it. */
export interface IFieldCompletions {
  from: number;
  options: Completion[];
}

const KEY = /^\s*([A-Za-z_]*)$/;
const VALUE = /^\s*([A-Za-z_]+)\s*:\s*(\S*)$/;

/** Parse the server's answer; anything malformed is dropped. */
export function parseFields(data: unknown): IConfigField[] {
  const fields = (data as { fields?: unknown } | null)?.fields;
  if (!Array.isArray(fields)) {
    return [];
  }
  return fields
    .filter(f => f && typeof f.name === 'string')
    .map(f => ({
      name: f.name as string,
      help: typeof f.help === 'string' ? f.help : '',
      values: Array.isArray(f.values) ? f.values.map(String) : []
    }));
}

/**
 * Candidates at offset `pos` of a cell's text: field names at the start of a body line, a
 * field's fixed values after `field:`; null outside a `%%finetune` body or with nothing typed
 * that matches.
 */
export function finetuneCompletions(
  text: string,
  pos: number,
  fields: IConfigField[]
): IFieldCompletions | null {
  const body = bodyRange(text);
  if (body === null || pos < body.from) {
    return null;
  }
  const lineStart = text.lastIndexOf('\n', pos - 1) + 1;
  const before = text.slice(lineStart, pos);
  const key = KEY.exec(before);
  if (key) {
    const typed = key[1];
    if (fields.some(f => f.name === typed)) {
      return null; // a whole name: `:` comes next
    }
    const options = fields
      .filter(f => f.name.startsWith(typed))
      .map(f => ({ label: f.name, type: 'property', info: f.help, apply: `${f.name}: ` }));
    return options.length ? { from: pos - typed.length, options } : null;
  }
  const value = VALUE.exec(before);
  if (value) {
    const typed = value[2];
    const field = fields.find(f => f.name === value[1]);
    const values = field?.values ?? [];
    if (values.includes(typed)) {
      return null; // a whole value (even one that starts a longer one): Enter is a new line
    }
    const options = values
      .filter(v => v.startsWith(typed))
      .map(v => ({ label: v, type: 'enum' }));
    return options.length ? { from: pos - typed.length, options } : null;
  }
  return null;
}

/**
 * The completion source: asks `getFields` each time (it may still be loading; then nothing is
 * offered yet). While typing, an empty line offers nothing; Ctrl-Space offers every field.
 */
export function finetuneSource(
  getFields: () => Promise<IConfigField[]>
): (context: CompletionContext) => Promise<CompletionResult | null> {
  return async context => {
    const text = context.state.doc.toString();
    if (bodyRange(text) === null) {
      return null;
    }
    if (!context.explicit && context.pos === context.state.doc.lineAt(context.pos).from) {
      return null;
    }
    const found = finetuneCompletions(text, context.pos, await getFields());
    // No `validFor`: the source is asked again on every key, so a value typed in full closes
    // the list and Enter starts the next line instead of picking it.
    return found ? { from: found.from, options: found.options } : null;
  };
}

/** The CodeMirror extension: completes as the user types, and on Ctrl-Space. */
export function finetuneCompletion(getFields: () => Promise<IConfigField[]>): Extension {
  return autocompletion({
    override: [finetuneSource(getFields)],
    activateOnTyping: true,
    icons: false
  });
}
