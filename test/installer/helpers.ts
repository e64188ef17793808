export * from '../../src/installer';
export { STATE_FILE as STATE_FILE_FOR_TESTS } from '../../src/installer/state';
