// `prepare` (npm runs it when the package is installed from a folder or from
// git, and before `npm pack`): builds dist/. npm installs a git dependency's
// devDependencies before `prepare`, but not a folder's, so a missing
// TypeScript is installed here first (into this folder, not the caller's).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('..', import.meta.url));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
// The caller's install settings (say, omit=dev or a global prefix) must not
// apply to this folder's own tools.
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('npm_config_')));
if (!existsSync(`${here}/node_modules/typescript/bin/tsc`)) {
  execFileSync(npm, ['install', '--include=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--no-save'], {
    cwd: here,
    env,
    stdio: 'inherit',
  });
}
execFileSync(npm, ['run', 'build'], { cwd: here, env, stdio: 'inherit' });
