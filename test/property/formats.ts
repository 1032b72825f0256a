/** The format profiles by name (the fuzz entry point's --format, corrupted backing files). */
import type { FormatProfile } from './profile.js';
import { QCOW2_PROFILE } from './qcow2-profile.js';
import { QED_PROFILE } from './qed-profile.js';

export const PROFILES: Readonly<Record<FormatProfile['name'], FormatProfile>> = { qed: QED_PROFILE, qcow2: QCOW2_PROFILE };

export function profileByName(name: string): FormatProfile | undefined {
  return name === 'qed' || name === 'qcow2' ? PROFILES[name] : undefined;
}
