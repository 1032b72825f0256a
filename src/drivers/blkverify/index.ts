export { BLKVERIFY_PREFIX, blkverifyDriver, blkverifyParseFilename, blkverifyTestImage } from './blkverify.js';
