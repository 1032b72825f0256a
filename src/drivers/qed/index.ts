export { qedDriver, qedProbe } from './qed.js';
export * from './header.js';
export { qedCreateParams, qedCreateWarnings, qedNewHeader, qedCreateOptions } from './create.js';
export { qedFindCluster, type QEDClusterRun, type QEDClusterKind } from './cluster.js';
export { L2Cache, type CachedL2Table } from './l2-cache.js';
export { QEDTable, QED_UNALLOC_CLUSTER, QED_ZERO_CLUSTER } from './table.js';
export { QEDAIOCB, qedAioPool } from './io.js';
export type { BDRVQEDState } from './state.js';
