import {
  DATA_CELL,
  FINETUNE_CELL,
  finetuneCells,
  loadsFtmagic,
  newNotebookCells,
  panelCellCode
} from '../cells';
import { isFinetuneCell } from '../finetuneCell';

describe('cells', () => {
  it('a new notebook loads the magics, defines the data path, then dry-runs', () => {
    const cells = newNotebookCells();
    expect(cells[0]).toBe('%load_ext ftmagic');
    expect(cells[1]).toContain('examples.path("ner", "train")');
    expect(cells[2].split('\n')[0]).toBe('%%finetune --dry-run');
    expect(isFinetuneCell(cells[2])).toBe(true);
    expect(cells[2]).toContain('model: ftmagic/tiny-chat');
    expect(cells[2]).toContain('train_data_path: "{train}"');
  });

  it('detects %load_ext ftmagic on any line', () => {
    expect(loadsFtmagic(['import os', 'x = 1\n%load_ext ftmagic'])).toBe(true);
    expect(loadsFtmagic(['%load_ext ftmagic_other', '# %load_ext ftmagic'])).toBe(false);
  });

  it('the panel cell loads the magics only when needed', () => {
    expect(panelCellCode(['%load_ext ftmagic'])).toBe('%ft panel');
    expect(panelCellCode(['x = 1'])).toBe('%load_ext ftmagic\n%ft panel');
  });

  it('the inserted %%finetune cell comes with the setup it needs', () => {
    expect(finetuneCells(['%load_ext ftmagic', 'train = "a.jsonl"'])).toEqual([FINETUNE_CELL]);
    expect(finetuneCells(['%load_ext ftmagic'])).toEqual([DATA_CELL, FINETUNE_CELL]);
    expect(finetuneCells([])).toEqual([`%load_ext ftmagic\n\n${DATA_CELL}`, FINETUNE_CELL]);
  });
});
