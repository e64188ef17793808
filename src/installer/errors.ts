import { MeshCniError } from '../errors';

/** Installing, keeping installed or uninstalling failed; the message names the file, the hint what to check. */
export class InstallerError extends MeshCniError {
  override readonly code = 'INSTALL_FAILED';
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options);
  }
}
