/**
 * ftmagic's JupyterLab extension: YAML highlighting and config field completion for
 * `%%finetune` cells, the fine-tuning runs sidebar, and commands to start a fine-tuning
 * notebook, insert a `%%finetune` cell and open the panel.
 */

import {
  ILayoutRestorer,
  type JupyterFrontEnd,
  type JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { EditorExtensionRegistry, IEditorExtensionRegistry } from '@jupyterlab/codemirror';
import { ILauncher } from '@jupyterlab/launcher';
import type { Kernel } from '@jupyterlab/services';
import { INotebookTracker, NotebookActions, type NotebookPanel } from '@jupyterlab/notebook';

import { fetchFields } from './api';
import { finetuneCells, newNotebookCells, panelCellCode } from './cells';
import { finetuneCompletion } from './completion';
import { isFinetuneCell } from './finetuneCell';
import { finetuneHighlighting } from './highlight';
import { runsIcon } from './icon';
import { type IRunSummary, reattachCode } from './model';
import { RunDetailWidget } from './runDetail';
import { RunsSidebar } from './sidebar';

const CATEGORY = 'Fine-tuning';

export namespace CommandIDs {
  export const newNotebook = 'ftmagic:new-notebook';
  export const insertCell = 'ftmagic:insert-finetune-cell';
  export const openPanel = 'ftmagic:open-panel';
  export const showRuns = 'ftmagic:show-runs';
}

/** Opens one run's detail view; takes `{ id }`, so it is not in the palette. */
export const OPEN_RUN = 'ftmagic:open-run';

/** The sources of a notebook's code cells. */
function codeSources(panel: NotebookPanel): string[] {
  const model = panel.content.model;
  if (!model) {
    return [];
  }
  return model.sharedModel.cells
    .filter(cell => cell.cell_type === 'code')
    .map(cell => cell.getSource());
}

/** Insert code cells below the active cell, in order; the last one ends up active. */
function insertBelow(panel: NotebookPanel, sources: string[]): void {
  const notebook = panel.content;
  for (const source of sources) {
    NotebookActions.insertBelow(notebook);
    const cell = notebook.activeCell;
    if (cell) {
      if (cell.model.type !== 'code') {
        NotebookActions.changeCellType(notebook, 'code');
      }
      notebook.activeCell?.model.sharedModel.setSource(source);
    }
  }
}

/** The comm the kernel side (ftmagic.ui.panel) opens to insert cells. */
export const CELLS_COMM_TARGET = 'ftmagic.cells';

/**
 * Answer the kernel's cells comm for this notebook: a hello says the extension is here, and
 * `insert_cell` puts the text in a new cell below the active one (the panel's cell, which the
 * click made active), then confirms.
 */
function listenForCells(panel: NotebookPanel): void {
  const register = (kernel: Kernel.IKernelConnection | null | undefined) => {
    kernel?.registerCommTarget(CELLS_COMM_TARGET, comm => {
      comm.onMsg = msg => {
        const data = msg.content.data as { action?: string; text?: string };
        if (data.action === 'insert_cell' && typeof data.text === 'string') {
          insertBelow(panel, [data.text]);
          comm.send({ inserted: true });
        }
      };
      comm.send({ hello: true });
    });
  };
  register(panel.sessionContext.session?.kernel);
  panel.sessionContext.kernelChanged.connect((_, change) => register(change.newValue));
}

function currentNotebook(tracker: INotebookTracker | null): NotebookPanel | null {
  const panel = tracker?.currentWidget ?? null;
  if (!panel) {
    Notification.warning('Open a notebook first.', { autoClose: 4000 });
  }
  return panel;
}

const highlightPlugin: JupyterFrontEndPlugin<void> = {
  id: 'ftmagic:highlight',
  description: 'YAML highlighting and config field completion for %%finetune cells.',
  autoStart: true,
  requires: [IEditorExtensionRegistry],
  activate: (_app: JupyterFrontEnd, registry: IEditorExtensionRegistry) => {
    registry.addExtension({
      name: 'ftmagic:finetune-yaml',
      factory: options =>
        EditorExtensionRegistry.createImmutableExtension(
          finetuneHighlighting(options.model.sharedModel.getSource())
        )
    });
    registry.addExtension({
      name: 'ftmagic:finetune-completion',
      factory: () => EditorExtensionRegistry.createImmutableExtension(finetuneCompletion(fetchFields))
    });
  }
};

const runsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'ftmagic:runs',
  description: 'The fine-tuning runs sidebar and the ftmagic commands.',
  autoStart: true,
  optional: [INotebookTracker, ICommandPalette, ILauncher, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null
  ) => {
    const { commands, shell } = app;

    const reattach = (run: IRunSummary) => {
      const panel = currentNotebook(tracker);
      if (panel) {
        insertBelow(panel, [reattachCode(run)]);
      }
    };
    const open = (run: IRunSummary) => void commands.execute(OPEN_RUN, { id: run.id });
    const sidebar = new RunsSidebar(reattach, open);
    shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, sidebar.id);
    // A %%finetune cell that ran has just created a run: show it without waiting for the poll.
    NotebookActions.executed.connect((_, { cell }) => {
      if (isFinetuneCell(cell.model.sharedModel.getSource())) {
        sidebar.poller.poke();
      }
    });

    commands.addCommand(CommandIDs.newNotebook, {
      label: args => (args.isLauncher ? 'Fine-tuning notebook' : 'New fine-tuning notebook'),
      caption: 'A notebook that fine-tunes the tiny built-in model on the bundled NER data',
      icon: runsIcon,
      execute: async args => {
        const kernelName = app.serviceManager.kernelspecs.specs?.default ?? 'python3';
        const panel: NotebookPanel = await commands.execute('notebook:create-new', {
          cwd: (args.cwd as string | undefined) ?? '',
          kernelName
        });
        await panel.context.ready;
        const shared = panel.content.model!.sharedModel;
        shared.transact(() => {
          shared.deleteCellRange(0, shared.cells.length);
          shared.insertCells(
            0,
            newNotebookCells().map(source => ({ cell_type: 'code', source, metadata: {} }))
          );
        });
        panel.content.activeCellIndex = 0;
        await panel.context.save();
        return panel;
      }
    });

    commands.addCommand(CommandIDs.insertCell, {
      label: 'Insert %%finetune cell',
      caption: 'Insert a %%finetune cell (and the setup it needs) below the active cell',
      icon: runsIcon,
      isEnabled: () => tracker?.currentWidget != null,
      execute: () => {
        const panel = currentNotebook(tracker);
        if (panel) {
          insertBelow(panel, finetuneCells(codeSources(panel)));
        }
      }
    });

    commands.addCommand(CommandIDs.openPanel, {
      label: 'Open the fine-tuning panel',
      caption: 'Insert and run a %ft panel cell: a form that builds, checks and starts a run',
      icon: runsIcon,
      isEnabled: () => tracker?.currentWidget != null,
      execute: async () => {
        const panel = currentNotebook(tracker);
        if (panel) {
          insertBelow(panel, [panelCellCode(codeSources(panel))]);
          await NotebookActions.run(panel.content, panel.sessionContext);
        }
      }
    });

    commands.addCommand(CommandIDs.showRuns, {
      label: 'Show fine-tuning runs',
      icon: runsIcon,
      execute: () => shell.activateById(sidebar.id)
    });

    commands.addCommand(OPEN_RUN, {
      label: 'Open fine-tuning run',
      execute: args => {
        const id = String(args.id ?? '');
        const existing = Array.from(shell.widgets('main')).find(w => w.id === `ftmagic-run-${id}`);
        if (existing) {
          shell.activateById(existing.id);
          return;
        }
        const content = new RunDetailWidget(id);
        const widget = new MainAreaWidget({ content });
        widget.id = content.id;
        widget.title.label = content.title.label;
        widget.title.icon = runsIcon;
        widget.title.closable = true;
        content.changed.connect(() => {
          widget.title.label = content.title.label;
          widget.title.caption = content.title.caption;
        });
        shell.add(widget, 'main');
        shell.activateById(widget.id);
      }
    });

    // The panel's "Copy as cell" asks, over this comm, for a cell below the panel at once.
    tracker?.widgetAdded.connect((_, panel) => listenForCells(panel));
    tracker?.forEach(listenForCells);

    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: CATEGORY });
    }
    launcher?.add({ command: CommandIDs.newNotebook, category: 'Notebook', rank: 10 });
  }
};

export default [highlightPlugin, runsPlugin];
