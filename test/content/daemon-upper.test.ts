// include_upper: changes a workspace made outside /workspace (to the image's files) come back too,
// deletions included.
import t from 'tap';
import { startDaemon } from '../helpers/daemon';
import { backupOf, busybox, waitForMarker } from './daemon-backup-fixture';

t.test("a backup with the upper layer brings back the workspace's changes to its image", async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('changer', 'echo edited > /etc/motd; rm /etc/hostname; mkdir -p /opt/tool; echo v1 > /opt/tool/ver; touch /workspace/done; exec sleep 600'));
  await waitForMarker(d, 'changer');
  const { result } = await backupOf(d, 'changer', true);
  await d.start(busybox('again', 'cat /etc/motd /opt/tool/ver > /workspace/seen; test -e /etc/hostname && echo present >> /workspace/seen; touch /workspace/restored; exec sleep 600', { restoreFrom: result.backupId }));
  await waitForMarker(d, 'again', 'restored');
  const seen = (await import('node:fs')).readFileSync(`${d.stateDir}/workspaces/again/content/seen`, 'utf8');
  t.equal(seen, 'edited\nv1\n', 'edits and new files are back, and the deleted image file stays deleted');
  t.equal((await d.get('again')).restoredFrom, result.backupId);
});
