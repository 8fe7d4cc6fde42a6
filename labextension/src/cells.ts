/**
 * The code the commands put into notebooks. Pure, so jest checks it.
 */

/**
 * A `%%finetune` cell to start from: the tiny built-in model on the bundled NER data, with
 * batches small enough to train in seconds on a CPU.
 */
export const FINETUNE_CELL = [
  '%%finetune --dry-run',
  '# Remove --dry-run to train. Every field: %%finetune?',
  'model: ftmagic/tiny-chat',
  'train_data_path: "{train}"',
  'task_type: CHAT_COMPLETION',
  'training_duration: 8ba',
  'tokens_per_batch: 512',
  'micro_batch_tokens: 512',
  'method: lora'
].join('\n');

/** The cell that defines `train`, the bundled NER training split used by `FINETUNE_CELL`. */
export const DATA_CELL = [
  'from ftmagic import examples',
  '',
  'train = examples.path("ner", "train")'
].join('\n');

const LOAD_EXT = /^\s*%load_ext\s+ftmagic\s*$/m;

/** Whether any of the notebook's code cells loads the ftmagic magics. */
export function loadsFtmagic(sources: string[]): boolean {
  return sources.some(source => LOAD_EXT.test(source));
}

/** The code of the "open the panel" cell: loads the magics first unless the notebook does. */
export function panelCellCode(sources: string[]): string {
  return loadsFtmagic(sources) ? '%ft panel' : '%load_ext ftmagic\n%ft panel';
}

function definesTrain(sources: string[]): boolean {
  return sources.some(source => /^\s*train\s*=/m.test(source));
}

/**
 * The cells "Insert %%finetune cell" adds: the `%%finetune` cell, after a setup cell that loads
 * the magics and defines `train` when the notebook does not do so yet.
 */
export function finetuneCells(sources: string[]): string[] {
  const setup: string[] = [];
  if (!loadsFtmagic(sources)) {
    setup.push('%load_ext ftmagic');
  }
  if (!definesTrain(sources)) {
    setup.push(DATA_CELL);
  }
  return setup.length > 0 ? [setup.join('\n\n'), FINETUNE_CELL] : [FINETUNE_CELL];
}

/** The code cells of a new fine-tuning notebook. */
export function newNotebookCells(): string[] {
  return ['%load_ext ftmagic', DATA_CELL, FINETUNE_CELL];
}
