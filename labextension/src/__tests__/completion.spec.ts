import { CompletionContext, type CompletionResult } from '@codemirror/autocomplete';
import { EditorState } from '@codemirror/state';

import {
  finetuneCompletion,
  finetuneCompletions,
  finetuneSource,
  type IConfigField,
  parseFields
} from '../completion';

const FIELDS: IConfigField[] = [
  {
    name: 'model',
    help: 'Model to fine-tune.',
    values: ['ftmagic/tiny-chat', 'ftmagic/tiny-chatml', 'Qwen/Qwen2.5-0.5B-Instruct']
  },
  { name: 'learning_rate', help: 'Peak learning rate.', values: [] },
  { name: 'lora_r', help: 'LoRA rank.', values: [] },
  { name: 'task_type', help: 'Task.', values: ['CHAT_COMPLETION', 'INSTRUCTION_FINETUNE', 'CONTINUED_PRETRAIN'] },
  { name: 'backend', help: 'Backend.', values: ['hf', 'native'] }
];

function labels(text: string, pos = text.length): string[] | null {
  const found = finetuneCompletions(text, pos, FIELDS);
  return found ? found.options.map(o => o.label) : null;
}

describe('finetuneCompletions', () => {
  it('offers field names at the start of a body line', () => {
    expect(labels('%%finetune\nlear')).toEqual(['learning_rate']);
    expect(labels('%%finetune\nmodel: x\nl')).toEqual(['learning_rate', 'lora_r']);
    expect(labels('%%finetune\n  lo')).toEqual(['lora_r']);
  });

  it('starts the replacement at the typed fragment and inserts the colon', () => {
    const text = '%%finetune\nmodel: x\nlear';
    const found = finetuneCompletions(text, text.length, FIELDS)!;
    expect(found.from).toBe(text.length - 4);
    expect(found.options[0].apply).toBe('learning_rate: ');
    expect(found.options[0].info).toBe('Peak learning rate.');
  });

  it('offers a fixed-choice field its values after the colon', () => {
    expect(labels('%%finetune\ntask_type: C')).toEqual(['CHAT_COMPLETION', 'CONTINUED_PRETRAIN']);
    expect(labels('%%finetune\nmodel: ftm')).toEqual(['ftmagic/tiny-chat', 'ftmagic/tiny-chatml']);
    expect(labels('%%finetune\nbackend: ')).toEqual(['hf', 'native']);
  });

  it('offers nothing outside a %%finetune body or for free-form values', () => {
    expect(labels('lear')).toBeNull();
    expect(labels('x = 1\nlear')).toBeNull();
    expect(labels('%%finetune')).toBeNull();
    expect(labels('%%finetune\nlearning_rate: 1')).toBeNull();
    expect(labels('%%finetune\nzzz')).toBeNull();
    expect(labels('%%finetune\nmodel: ftmagic/tiny-chat')).toBeNull(); // whole, though a prefix
    expect(labels('%%finetune\nmodel')).toBeNull();
    expect(labels('%%finetune\nlear\nmodel: x', 4)).toBeNull(); // in the magic line
  });

  it('completes at the cursor, not at the end of the text', () => {
    const text = '%%finetune\nlear\nmodel: x';
    expect(labels(text, text.indexOf('\nmodel'))).toEqual(['learning_rate']);
  });
});

describe('parseFields', () => {
  it('keeps well-formed fields and drops the rest', () => {
    expect(
      parseFields({ fields: [{ name: 'seed', help: 'Seed.', values: [] }, { help: 'no name' }, null] })
    ).toEqual([{ name: 'seed', help: 'Seed.', values: [] }]);
    expect(parseFields({ fields: [{ name: 'x', values: [1, 'a'] }] })).toEqual([
      { name: 'x', help: '', values: ['1', 'a'] }
    ]);
    expect(parseFields(null)).toEqual([]);
    expect(parseFields({ message: 'Forbidden' })).toEqual([]);
  });
});

describe('finetuneSource (on a real EditorState)', () => {
  async function complete(doc: string, explicit = false): Promise<CompletionResult | null> {
    const state = EditorState.create({ doc, extensions: finetuneCompletion(async () => FIELDS) });
    return finetuneSource(async () => FIELDS)(new CompletionContext(state, doc.length, explicit));
  }

  it('completes a typed field name', async () => {
    const result = await complete('%%finetune\nmodel: ftmagic/tiny-chat\nlear');
    expect(result!.options.map(o => o.label)).toEqual(['learning_rate']);
    expect(result!.from).toBe('%%finetune\nmodel: ftmagic/tiny-chat\n'.length);
  });

  it('waits for a letter on an empty line unless asked', async () => {
    expect(await complete('%%finetune\n')).toBeNull();
    const asked = await complete('%%finetune\n', true);
    expect(asked!.options.map(o => o.label)).toEqual(FIELDS.map(f => f.name));
  });

  it('stays out of other cells', async () => {
    expect(await complete('lear', true)).toBeNull();
  });
});
