/**
 * The installer library: put the shim, the engine, a kubeconfig and our conflist entry on the node; keep them
 * there while the primary CNI rewrites its config; take them away again, byte for byte.
 * The agent calls watchAndRepair() at start and uninstall() on SIGTERM; the CLI calls uninstall({dryRun}) and
 * checkInstalled().
 */
export { install, checkInstalled, installedPaths, SHIM_NAME, ENGINE_DIR_NAME, LEGACY_ENGINE_NAME, STANDALONE_CONF_NAME } from './install';
export { watchAndRepair, describeHold, holdFilePath } from './watch';
export type { InstallEvent, InstallWatcher, WatchOptions, WatchTrigger, FightReport } from './watch';
export { DEFAULT_FIGHT_POLICY, FightGuard, adviceFor } from './fight';
export type { FightPolicy, HoldState } from './fight';
export { uninstall } from './uninstall';
export { OWNED_CONF_NAME, ownedConfigName, ownedConfigPath } from './owned-config';
export { findPrimaryConfig, scanConfDir, chosenConfig, CONF_EXTENSIONS } from './primary-config';
export type { PrimaryConfig, ConfigKind } from './primary-config';
export { PLUGIN_TYPE } from './conflist';
export { buildKubeconfig, renderKubeconfig, KUBECONFIG_MODE } from './kubeconfig';
export type { KubeconfigSource } from './kubeconfig';
export { InstallerError } from '../errors';
export type * from './types';
export * from './defaults';
