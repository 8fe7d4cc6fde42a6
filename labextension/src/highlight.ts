/**
 * YAML highlighting for `%%finetune` cells, as a CodeMirror 6 extension.
 *
 * While the cell's first line is `%%finetune`, the cell's language is swapped (in a compartment,
 * at the highest precedence) for a stream language that reads the magic line, then YAML through
 * CodeMirror's legacy YAML mode. JupyterLab's own highlight style colours the tokens; the
 * `tok-*` classes of `@lezer/highlight`'s `classHighlighter` are added too, so tests and themes
 * can see what each token is. A transaction extender turns the swap on and off as the user types
 * or deletes the magic line, so the cell never needs reopening.
 */

import {
  StreamLanguage,
  type StreamParser,
  type StringStream,
  syntaxHighlighting
} from '@codemirror/language';
import { yaml } from '@codemirror/legacy-modes/mode/yaml';
import { Compartment, EditorState, type Extension, Prec, type Text } from '@codemirror/state';
import { classHighlighter, tags } from '@lezer/highlight';

import { isFinetuneCell } from './finetuneCell';

/** The CodeMirror language name (also set as `data-language` on the editor content). */
export const LANGUAGE_NAME = 'ftmagic-finetune';

/** The head of the document is enough to decide; long cells are not re-read on every key. */
const HEAD_CHARS = 4096;

/** The wrapper's state: whether the magic line was read, and the YAML mode's own state. */
export interface IFinetuneState<S> {
  magicRead: boolean;
  inner: S;
}

function copyFlat<S>(state: S): S {
  if (typeof state !== 'object' || state === null) {
    return state;
  }
  const copy: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(state as Record<string, unknown>)) {
    copy[key] = Array.isArray(value) ? [...value] : value;
  }
  return copy as S;
}

/**
 * A stream parser for a whole `%%finetune` cell: the first non-blank line is the magic (its
 * name a keyword, its flags meta), every later line goes to `inner` (the YAML mode). YAML keys
 * are property names.
 */
export function finetuneParser<S>(inner: StreamParser<S>): StreamParser<IFinetuneState<S>> {
  return {
    name: LANGUAGE_NAME,
    startState: indentUnit => ({
      magicRead: false,
      inner: inner.startState ? inner.startState(indentUnit) : (true as S)
    }),
    copyState: state => ({
      magicRead: state.magicRead,
      inner: inner.copyState ? inner.copyState(state.inner) : copyFlat(state.inner)
    }),
    token(stream: StringStream, state: IFinetuneState<S>): string | null {
      if (!state.magicRead) {
        if (stream.sol() && stream.match('%%finetune')) {
          state.magicRead = stream.eol();
          return 'magic';
        }
        stream.skipToEnd();
        state.magicRead = true;
        return 'meta';
      }
      return inner.token(stream, state.inner);
    },
    blankLine(state: IFinetuneState<S>, indentUnit: number): void {
      if (state.magicRead && inner.blankLine) {
        inner.blankLine(state.inner, indentUnit);
      }
    },
    indent: (state, textAfter, context) =>
      state.magicRead && inner.indent ? inner.indent(state.inner, textAfter, context) : null,
    languageData: inner.languageData,
    tokenTable: { ...inner.tokenTable, magic: tags.keyword, atom: tags.propertyName }
  };
}

/** The stream language of `%%finetune` cells (YAML body). */
export function finetuneLanguage(): StreamLanguage<IFinetuneState<unknown>> {
  return StreamLanguage.define(finetuneParser(yaml as StreamParser<unknown>));
}

/** Whether a document is a `%%finetune` cell, reading only its head. */
export function isFinetuneDoc(doc: Text): boolean {
  return isFinetuneCell(doc.sliceString(0, Math.min(doc.length, HEAD_CHARS)));
}

/**
 * The editor extension: YAML highlighting for the cell while it is a `%%finetune` cell.
 *
 * `initialText` is the cell source when the editor is created; after that the document itself
 * decides, on every change.
 */
export function finetuneHighlighting(initialText = ''): Extension {
  const compartment = new Compartment();
  const on: Extension = [
    Prec.highest(finetuneLanguage()),
    syntaxHighlighting(classHighlighter)
  ];
  const off: Extension = [];
  const switcher = EditorState.transactionExtender.of(tr => {
    if (!tr.docChanged) {
      return null;
    }
    const wanted = isFinetuneDoc(tr.newDoc) ? on : off;
    return compartment.get(tr.startState) === wanted
      ? null
      : { effects: compartment.reconfigure(wanted) };
  });
  return [compartment.of(isFinetuneCell(initialText) ? on : off), switcher];
}
