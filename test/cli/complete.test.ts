/** Which word a TAB completes (pure): a pod after `explain` or `--pod`, a namespace after `-n`, else yargs'. */
import test from 'ava';
import { optionValue, wantedWord, wordsFor } from '../../src/cli/complete';

const cases: Array<[string, string[], ReturnType<typeof wantedWord>]> = [
  ['explain <TAB>', ['mesh-cni', 'explain', ''], 'pod'],
  ['explain sh<TAB>', ['mesh-cni', 'explain', 'sh'], 'pod'],
  ['explain after options and their values', ['mesh-cni', 'explain', '--kubeconfig', '/k', '-o', 'json', 'sh'], 'pod'],
  ['explain: the pod is given already', ['mesh-cni', 'explain', 'shop/cart', ''], undefined],
  ['explain: a value of --kubeconfig is no pod', ['mesh-cni', 'explain', '--kubeconfig', ''], undefined],
  ['explain: a flag is being typed', ['mesh-cni', 'explain', '--ku'], undefined],
  ['--pod <TAB>', ['mesh-cni', 'apply', '--pod', 'sh'], 'pod'],
  ['-n <TAB>', ['mesh-cni', 'pods', '-n', ''], 'namespace'],
  ['--namespace <TAB>', ['mesh-cni', 'pods', '--namespace', 'sh'], 'namespace'],
  ['--service <TAB>', ['mesh-cni', 'pods', '--service', 'sh'], 'service'],
  ['pods --service VALUE then -n <TAB>', ['mesh-cni', 'pods', '--service', 'shop/cart', '-n', ''], 'namespace'],
  ['--backend <TAB> is yargs\' (choices)', ['mesh-cni', 'plan', '--backend', ''], undefined],
  ['a command name', ['mesh-cni', 'ex'], undefined],
];
for (const [name, words, wanted] of cases) test(`wantedWord: ${name}`, (t) => t.is(wantedWord(words), wanted));

test('optionValue: --name VALUE and --name=VALUE, never the word being completed', (t) => {
  t.is(optionValue(['mesh-cni', 'explain', '--kubeconfig', '/a', 'sh'], 'kubeconfig'), '/a');
  t.is(optionValue(['mesh-cni', 'explain', '--kubeconfig=/b', 'sh'], 'kubeconfig'), '/b');
  t.is(optionValue(['mesh-cni', 'explain', '--kubeconfig'], 'kubeconfig'), undefined);
});

test('wordsFor: pods as NAMESPACE/POD, namespaces once, filtered by the prefix, sorted', (t) => {
  const pods = [{ namespace: 'shop', name: 'cart' }, { namespace: 'kube-system', name: 'dns' }, { namespace: 'shop', name: 'api' }];
  t.deepEqual(wordsFor('pod', pods, 'sh'), ['shop/api', 'shop/cart']);
  t.deepEqual(wordsFor('namespace', pods, ''), ['kube-system', 'shop']);
  t.deepEqual(wordsFor('service', pods, 'shop/'), ['shop/api', 'shop/cart'], 'services as NAMESPACE/NAME');
});
