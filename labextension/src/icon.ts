import { LabIcon } from '@jupyterlab/ui-components';

import runsSvg from '../style/icons/runs.svg';

/** The fine-tuning icon: the runs sidebar tab, the launcher item and the commands. */
export const runsIcon = new LabIcon({ name: 'ftmagic:runs', svgstr: runsSvg });
