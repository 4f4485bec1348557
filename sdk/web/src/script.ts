// The one-script-tag build (`/sdk/v1/qoeflow.min.js`): `window.qoeflow`.
import * as sdk from './index';

declare const __QOEFLOW_VERSION__: string;
(globalThis as unknown as { qoeflow: unknown }).qoeflow = { ...sdk, version: __QOEFLOW_VERSION__ };
