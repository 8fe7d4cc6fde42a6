/**
 * Calls to the ftmagic Jupyter server extension (`/ftmagic/api/...`), with Jupyter's auth and
 * XSRF handling from `ServerConnection`.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { type IConfigField, parseFields } from './completion';
import { type IRunDetail, parseDetail } from './detail';
import { type IRunsPayload, parsePayload } from './model';

async function request(path: string, init: RequestInit = {}): Promise<unknown> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'ftmagic', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data as { message?: string } | null)?.message ?? response.statusText;
    throw new ServerConnection.ResponseError(response, message);
  }
  return data;
}

/** Every run the server's MLflow store holds, newest first. */
export async function fetchRuns(): Promise<IRunsPayload> {
  return parsePayload(await request('runs'));
}

/** One run with its events, curves and checkpoints (for its detail view). */
export async function fetchRun(runId: string): Promise<IRunDetail> {
  const detail = parseDetail(await request(`runs/${encodeURIComponent(runId)}`));
  if (detail === null) {
    throw new Error(`run ${runId}: the server's answer is not a run`);
  }
  return detail;
}

/** Ask a run to stop (it ends as STOPPED after its current step). */
export async function cancelRun(runId: string): Promise<void> {
  await request(`runs/${encodeURIComponent(runId)}/cancel`, { method: 'POST' });
}

let fields: Promise<IConfigField[]> | null = null;

/** The config fields `%%finetune` cells take (asked once; asked again after a failure). */
export function fetchFields(): Promise<IConfigField[]> {
  if (fields === null) {
    fields = request('fields')
      .then(parseFields)
      .catch(err => {
        console.warn('ftmagic: config fields not available for completion', err);
        fields = null;
        return [];
      });
  }
  return fields;
}
