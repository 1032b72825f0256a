export {
  BLKDEBUG_PREFIX,
  blkdebugBreak,
  blkdebugDriver,
  blkdebugFind,
  blkdebugIsSuspended,
  blkdebugParseFilename,
  blkdebugRemoveBreak,
  blkdebugResume,
  blkdebugState,
  blkdebugWaitBreak,
  openProtocolNode,
} from './blkdebug.js';
export {
  BLKDEBUG_IO_TYPES,
  DEFAULT_IOTYPES,
  parseBlkdebugConfig,
  parseEventName,
  type BlkdebugIOType,
  type BlkdebugRule,
  type InjectErrorRule,
  type SetStateRule,
  type SuspendRule,
} from './config.js';
export { BlkdebugState, setBlkdebugMessageSink, type InjectedError } from './state.js';
