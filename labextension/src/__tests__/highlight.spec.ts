import { ensureSyntaxTree, language } from '@codemirror/language';
import { EditorState } from '@codemirror/state';
import { classHighlighter, highlightTree } from '@lezer/highlight';

import { finetuneHighlighting, LANGUAGE_NAME } from '../highlight';

/** `[text, classes]` of every highlighted token of the document. */
function tokens(state: EditorState): Array<[string, string]> {
  const tree = ensureSyntaxTree(state, state.doc.length, 5000);
  if (!tree) {
    throw new Error('the document was not parsed');
  }
  const found: Array<[string, string]> = [];
  highlightTree(tree, classHighlighter, (from, to, classes) => {
    found.push([state.doc.sliceString(from, to), classes]);
  });
  return found;
}

function classOf(state: EditorState, text: string): string | undefined {
  return tokens(state).find(([t]) => t === text)?.[1];
}

function activeLanguage(state: EditorState): string | null {
  return state.facet(language)?.name ?? null;
}

const CELL = [
  '%%finetune --dry-run',
  'model: ftmagic/tiny-chat',
  'train_data_path: "{train}"',
  'training_duration: 8ba',
  'learning_rate: 0.001',
  'packing: true',
  '# a comment',
  'eval_prompts:',
  '  - What is aspirin?'
].join('\n');

describe('finetuneHighlighting', () => {
  it('highlights the body of a %%finetune cell as YAML', () => {
    const state = EditorState.create({ doc: CELL, extensions: [finetuneHighlighting(CELL)] });
    expect(activeLanguage(state)).toBe(LANGUAGE_NAME);
    expect(classOf(state, '%%finetune')).toBe('tok-keyword');
    expect(classOf(state, ' --dry-run')).toBe('tok-meta');
    for (const key of ['model', 'train_data_path', 'training_duration', 'learning_rate']) {
      expect(classOf(state, key)).toBe('tok-propertyName');
    }
    expect(classOf(state, '"{train}"')).toBe('tok-string');
    expect(classOf(state, '0.001')).toBe('tok-number');
    expect(classOf(state, 'true')).toBe('tok-keyword');
    expect(classOf(state, '# a comment')).toBe('tok-comment');
  });

  it('reads a bare magic line and the YAML after it', () => {
    const doc = '%%finetune\nmodel: x';
    const state = EditorState.create({ doc, extensions: [finetuneHighlighting(doc)] });
    expect(classOf(state, '%%finetune')).toBe('tok-keyword');
    expect(classOf(state, 'model')).toBe('tok-propertyName');
  });

  it('leaves other cells alone', () => {
    const doc = 'model = 1\nprint(model)';
    const state = EditorState.create({ doc, extensions: [finetuneHighlighting(doc)] });
    expect(activeLanguage(state)).toBeNull();
    expect(ensureSyntaxTree(state, state.doc.length, 5000)?.length ?? 0).toBe(0);
  });

  it('switches on when the magic line is typed and off when it is removed', () => {
    const body = '\nmodel: ftmagic/tiny-chat';
    let state = EditorState.create({ doc: body, extensions: [finetuneHighlighting(body)] });
    expect(activeLanguage(state)).toBeNull();
    for (const ch of '%%finetune') {
      state = state.update({ changes: { from: state.doc.length - body.length, insert: ch } }).state;
    }
    expect(state.doc.toString()).toBe('%%finetune' + body);
    expect(activeLanguage(state)).toBe(LANGUAGE_NAME);
    expect(classOf(state, 'model')).toBe('tok-propertyName');

    state = state.update({ changes: { from: 0, to: 2 } }).state; // delete "%%"
    expect(activeLanguage(state)).toBeNull();
    state = state.update({ changes: { from: 0, insert: '%%' } }).state;
    expect(activeLanguage(state)).toBe(LANGUAGE_NAME);
  });

  it('trusts the document over a stale initial text', () => {
    let state = EditorState.create({ doc: 'x = 1', extensions: [finetuneHighlighting(CELL)] });
    expect(activeLanguage(state)).toBe(LANGUAGE_NAME);
    state = state.update({ changes: { from: 0, insert: '#' } }).state;
    expect(activeLanguage(state)).toBeNull();
  });
});
