export { RAW_PROBE_GUARD_BYTES, rawDriver } from './raw.js';
